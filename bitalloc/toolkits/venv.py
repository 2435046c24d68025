"""A toolkit that cannot live beside bitalloc's pins, installed in its own virtual environment
once per machine and driven through a worker script run by that environment's Python.

:class:`VenvToolkit` holds the pins and the pip steps; ``make <target>`` runs :meth:`build`
(``python -m bitalloc.toolkits.<name> build``). The venv lives in ``$<ENV_VAR>`` (default
``<bitalloc cache>/<name>/<version>``); a missing one raises :class:`ToolkitMissing` naming the
make target. Workers run with ``python -I`` (so their folder does not shadow the toolkit's own
package) in a scratch folder, take the job's JSON config as their first argument, and fail with
:class:`ToolFailed` and their last lines.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..models.cache import cache_dir
from .process import ToolFailed, ToolkitMissing, run


@dataclass(frozen=True)
class VenvToolkit:
    """One toolkit in its own venv: ``steps`` are pip argument lists (with extra environment)
    installed in order."""

    name: str
    version: str
    env_var: str
    make_target: str
    steps: tuple[tuple[tuple[str, ...], Mapping[str, str]], ...]
    worker_env: Mapping[str, str] = field(default_factory=dict)

    def home(self) -> Path:
        env = os.environ.get(self.env_var)
        return Path(env) if env else cache_dir(self.name, self.version)

    def python(self) -> Path:
        """The venv's interpreter; :class:`ToolkitMissing` naming the make target if absent."""
        exe = self.home() / "venv" / "bin" / "python"
        if not (self.home() / "built.json").is_file() or not exe.is_file():
            raise ToolkitMissing(
                f"{self.name} {self.version} is not installed in {self.home()}: run "
                f"`make {self.make_target}` (its own venv, once per machine)"
            )
        return exe

    def build(self, *, force: bool = False, log: Callable[[str], None] = print) -> Path:
        """Create the venv and run the pip steps (a no-op when done)."""
        root = self.home()
        stamp = root / "built.json"
        if stamp.is_file() and not force:
            log(f"{self.name} {self.version} already installed in {root}")
            return root
        stamp.unlink(missing_ok=True)
        venv = root / "venv"
        shutil.rmtree(venv, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        log(f"creating {venv}")
        run([sys.executable, "-m", "venv", venv], timeout=600)
        pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
        for args, env in self.steps:
            log(f"pip install {' '.join(args)}")
            run([*pip, *args], timeout=3600, env=dict(env) or None)
        steps = [list(a) for a, _ in self.steps]
        stamp.write_text(json.dumps({"version": self.version, "steps": steps}, indent=1))
        log(f"{self.name} {self.version} installed in {root}")
        return root

    def run_worker(
        self,
        worker: Path,
        args: Sequence[object],
        *,
        config: Mapping[str, object] | None = None,
        timeout: float,
    ) -> str:
        """``python -I WORKER [CONFIG.json] ARGS...`` in the venv, in a scratch folder
        (toolkits write logs into their working folder); ``config`` is written there as JSON and
        passed first, path arguments are made absolute. Its combined output."""
        import tempfile

        exe = self.python()
        env = dict(self.worker_env) or None
        argv = [Path(a).absolute() if isinstance(a, Path) else a for a in args]
        with tempfile.TemporaryDirectory(prefix=f"{self.name}-") as scratch:
            if config is not None:
                path = Path(scratch) / "config.json"
                path.write_text(json.dumps(config))
                argv.insert(0, path)
            return run([exe, "-I", worker, *argv], timeout=timeout, env=env, cwd=scratch)

    def main(self, argv: Sequence[str] | None = None) -> int:
        """``build [--force]`` / ``where`` (the module's command line)."""
        import argparse

        module = self.name.replace("-", "")
        p = argparse.ArgumentParser(prog=f"python -m bitalloc.toolkits.{module}")
        sub = p.add_subparsers(dest="cmd", required=True)
        b = sub.add_parser("build", help=f"create {self.name}'s venv (once per machine)")
        b.add_argument("--force", action="store_true")
        sub.add_parser("where", help="print the venv's python")
        args = p.parse_args(argv)
        try:
            if args.cmd == "build":
                self.build(force=args.force)
            else:
                print(self.python())
        except (ToolFailed, ToolkitMissing) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
