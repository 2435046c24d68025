"""Atomic file writes: a temp file in the target folder, fsync, then rename.

A reader never sees a half-written file and a failed write leaves the old file untouched.
Temp files are named ``.NAME.<pid>.<random>.tmp``; one left by a writer that was killed (its
process is gone) is removed by the next write to the same target.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

STALE_UNOWNED_S = 24 * 3600  # temp files without a pid in their name (older versions)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` and move the finished file onto ``path`` atomically."""
    return atomic_write_set({path: write})[0]


def atomic_write_set(
    writes: dict[str | os.PathLike[str], Callable[[Path], object]],
) -> list[Path]:
    """Write several files as one set: every ``write(tmp_path)`` is finished and synced
    before the first rename, so a crash leaves either the old set or (but for the few
    microseconds of the renames) the new one, never a half-written file."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in writes.items():
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(target)
            tmp_path = _temp_for(target)
            staged.append((tmp_path, target))
            write(tmp_path)
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        for tmp_path, target in staged:
            os.replace(tmp_path, target)
    except BaseException:
        for tmp_path, _ in staged:
            tmp_path.unlink(missing_ok=True)
        raise
    return [target for _, target in staged]


def _temp_for(target: Path) -> Path:
    prefix = f".{target.name}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, _mode(target))  # mkstemp makes 0600; keep the file's or the umask's mode
    return Path(tmp)


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove ``.NAME.<pid>.*.tmp`` files next to ``target`` whose writer process is gone
    (and pid-less ``.NAME.*.tmp`` ones older than a day); returns what was removed."""
    import time

    removed = []
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        middle = tmp.name[len(target.name) + 2 : -len(".tmp")]
        pid_text = middle.split(".", 1)[0]
        try:
            if pid_text.isdigit() and "." in middle:
                if _alive(int(pid_text)):
                    continue
            elif time.time() - tmp.stat().st_mtime < STALE_UNOWNED_S:
                continue
            tmp.unlink()
        except OSError:
            continue  # gone already, or not ours to remove
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _mode(target: Path) -> int:
    """The existing file's permissions, else ``0o666`` minus the process umask."""
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Parse the JSON file ``path``; unreadable or invalid files raise ValueError naming
    ``what`` ("plan", "frontier", ...) and the path."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read {what} {os.fspath(path)!r}: {e.strerror}") from None
    return parse_json(text, f"{what} {os.fspath(path)!r}")


def parse_json(text: str | bytes, where: str) -> Any:
    """``json.loads(text)``; invalid or too deeply nested JSON raises ValueError naming
    ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply to be one") from None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
