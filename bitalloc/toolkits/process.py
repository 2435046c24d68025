"""Running an external toolkit: one error for a toolkit that is not installed, one for a tool
run that failed (with its last output lines), and outputs that appear only when complete."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ..search._io import file_mode

TAIL_LINES = 20


class ToolkitMissing(RuntimeError):
    """A toolkit is not installed here; the message names the make target that installs it."""


class ToolFailed(RuntimeError):
    """A toolkit's tool exited non-zero; the message ends with its last output lines."""


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 3600.0,
    env: dict | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> str:
    """Run ``argv`` and return its combined output; :class:`ToolFailed` with the last
    :data:`TAIL_LINES` lines when it exits non-zero, cannot start or times out."""
    cmd = [str(a) for a in argv]
    name = Path(cmd[0]).name if cmd else "?"
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        out = e.output if isinstance(e.output, str) else (e.output or b"").decode(errors="replace")
        raise ToolFailed(
            f"{name} timed out after {timeout:g} s; last lines:\n{_tail(out)}"
        ) from None
    except OSError as e:
        raise ToolFailed(f"{name} could not start: {e}") from None
    if proc.returncode != 0:
        raise ToolFailed(
            f"{name} exited with {proc.returncode}; last lines:\n{_tail(proc.stdout)}"
        )
    return proc.stdout


def _tail(text: str, n: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def produce(out: str | os.PathLike[str], make: Callable[[Path], object]) -> Path:
    """Call ``make(tmp)`` for a temporary path beside ``out``; move it onto ``out`` only when
    it returns and the file exists. Nothing is left behind when it raises."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        make(tmp)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise ToolFailed(f"the tool wrote nothing to {out.name}")
        os.chmod(tmp, file_mode(out))  # mkstemp makes 0600: keep the file's or umask's mode
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
