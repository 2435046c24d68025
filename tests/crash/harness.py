"""Run ``bitalloc`` commands and SIGKILL them at their K-th file-system write.

Python audit hooks see every ``open`` for writing, rename/replace, remove, truncate, mkdir
and rmtree before it happens. :func:`run` executes ``bitalloc.cli.main(argv)`` in a child
process (forked by a ``forkserver`` that has imported bitalloc and transformers once, so a
run costs milliseconds of start-up, not seconds) and kills it with SIGKILL at the K-th such
event under ``root`` (counting from 0): at once (``delay_ms`` 0: the operation never happens)
or ``delay_ms`` milliseconds later from a timer thread (so the kill lands inside whatever
follows, for example the middle of a large write); ``kill_at=-1`` kills ``delay_ms`` after
the start, for writers the hooks cannot see (SQLite's C library). ``kill_at=None`` kills
nothing and returns the number of events the command made.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

EVENTS = frozenset({"open", "os.rename", "os.remove", "os.truncate", "os.mkdir", "shutil.rmtree"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PRELOAD = [  # what a command imports lazily, imported once by the fork server
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.models.llama.modeling_llama",
    "transformers.tokenization_utils_fast",
    "bitalloc",
    "bitalloc.cli",
    "bitalloc.search.api",
    "bitalloc.solvers",
    "bitalloc.sensitivity",
    "bitalloc.backends",
    "bitalloc.data",
    "bitalloc.studies.study",
    "bitalloc.studies.worker",
    "tests.crash.harness",
]


@dataclass(frozen=True)
class Outcome:
    exitcode: int  # -9: killed
    events: int  # writes seen before the kill (or in total)
    log: str  # the command's stdout + stderr
    seconds: float  # wall time of the child

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL


def _writes(event: str, args: tuple) -> bool:
    if event != "open":
        return True
    mode, flags = args[1], args[2]
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return bool(isinstance(flags, int) and flags & _WRITE_FLAGS)


def _child(
    root: str, kill_at: int | None, delay_ms: float, argv: list, cwd: str, log: str, env: dict
) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.update(env)
    os.chdir(cwd)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # before the hook
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    prefix = os.path.realpath(root) + os.sep
    seen = [0]

    def kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def hook(event: str, args: tuple) -> None:
        if event not in EVENTS or not args or not _writes(event, args):
            return
        path = args[0]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        if not os.path.realpath(os.fsdecode(path)).startswith(prefix):
            return
        if seen[0] == kill_at and kill_at >= 0:
            if delay_ms <= 0:
                kill()
            threading.Timer(delay_ms / 1000.0, kill).start()
        seen[0] += 1

    sys.addaudithook(hook)
    if kill_at == -1:  # a timer from the start instead of a write
        threading.Timer(delay_ms / 1000.0, kill).start()
    from bitalloc.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, f"\ncrash-events {seen[0]}\n".encode())
    os._exit(code)


_CONTEXT: multiprocessing.context.BaseContext | None = None


def _context() -> multiprocessing.context.BaseContext:
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        _CONTEXT = ctx
    return _CONTEXT


def run(
    argv: list[str],
    *,
    root: Path,
    cwd: Path,
    kill_at: int | None = None,
    delay_ms: float = 0.0,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> Outcome:
    """``bitalloc argv`` in a child, killed at its ``kill_at``-th write under ``root``
    (``kill_at=-1``: ``delay_ms`` after the start), with ``env`` added to its environment."""
    log = cwd / f".crash-log-{os.getpid()}"
    proc = _context().Process(
        target=_child,
        args=(str(root), kill_at, delay_ms, list(argv), str(cwd), str(log), dict(env or {})),
    )
    started = time.perf_counter()
    proc.start()
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise TimeoutError(f"bitalloc {' '.join(argv)} ran past {timeout:g} s")
    text = log.read_text(errors="replace")
    log.unlink()
    events = next(
        (int(line.split()[1]) for line in text.splitlines() if line.startswith("crash-events ")),
        -1,
    )
    seconds = time.perf_counter() - started
    return Outcome(exitcode=proc.exitcode, events=events, log=text, seconds=seconds)
