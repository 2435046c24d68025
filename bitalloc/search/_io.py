"""Atomic file writes: a temp file in the target folder, fsync, then rename.

A reader never sees a half-written file and a failed write leaves the old file untouched.
Temp files are named ``.NAME.<pid>.<random>.tmp``; one left by a writer that was killed (its
process is gone) is removed by the next write to the same target.

A set of files that must change together (a frontier's .json/.csv/.png) is written with
:func:`atomic_write_folder`: the new folder is staged beside the old one and the two are
swapped by one ``renameat2(RENAME_EXCHANGE)``, so a reader (or a SIGKILL) sees the old set or
the new one, never a mix.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

STALE_UNOWNED_S = 24 * 3600  # temp files without a pid in their name (older versions)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
log = logging.getLogger(__name__)


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


def atomic_write_folder(
    folder: str | os.PathLike[str], writes: dict[str, Callable[[Path], object]]
) -> list[Path]:
    """Write the files ``writes`` (name -> ``write(tmp_path)``) into ``folder`` as one set.

    The folder is staged as ``.NAME.<pid>.<random>.tmp`` beside it: the folder's other
    entries are hard-linked in (no data is copied or lost), the new files are written and
    synced, then the staged and the live folder are exchanged atomically
    (``renameat2(RENAME_EXCHANGE)``) and the old one is removed. Where the file system cannot
    exchange (or hard-link), the files are replaced one by one as :func:`atomic_write_set`
    does, and a crash in the microseconds between those renames can mix old and new.
    """
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    existed = target.exists()  # if not, there is nothing to mix with: a rename suffices
    stage = _stage_folder(target)
    try:
        if existed:
            _link_others(target, stage, set(writes))
        _write_staged(stage, writes)
        if existed:
            _exchange(stage, target)
        else:
            os.rename(stage, target)
    except _CannotSwap as e:
        shutil.rmtree(stage, ignore_errors=True)
        log.debug("folder swap unavailable for %s (%s): replacing file by file", target, e)
        return atomic_write_set({target / name: write for name, write in writes.items()})
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if existed:
        shutil.rmtree(stage, ignore_errors=True)  # the old folder, now at the stage's name
    return [target / name for name in writes]


class _CannotSwap(OSError):
    pass


def _stage_folder(target: Path) -> Path:
    stage = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    )
    try:
        os.chmod(stage, (target.stat().st_mode if target.exists() else 0o777 & ~_umask()) & 0o7777)
    except OSError:
        pass
    return stage


def _link_others(target: Path, stage: Path, names: set[str]) -> None:
    for entry in os.scandir(target):
        if entry.name in names:
            continue
        dst = stage / entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.copytree(entry.path, dst, symlinks=True, copy_function=os.link)
            elif entry.is_symlink():
                os.symlink(os.readlink(entry.path), dst)
            else:
                os.link(entry.path, dst)
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise _CannotSwap(e.errno, f"cannot hard-link {entry.path}") from None
            raise


def _write_staged(stage: Path, writes: dict[str, Callable[[Path], object]]) -> None:
    for name, write in writes.items():
        path = stage / name
        write(path)
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(stage, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux ``renameat2``); :class:`_CannotSwap` where the
    platform or the file system has no exchange."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        raise _CannotSwap(errno.ENOSYS, "renameat2 is not available") from None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
            raise _CannotSwap(err, os.strerror(err))
        raise OSError(err, os.strerror(err), os.fspath(b))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _temp_for(target: Path) -> Path:
    prefix = f".{target.name}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, file_mode(target))  # mkstemp makes 0600; keep the file's or the umask's mode
    return Path(tmp)


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove ``.NAME.<pid>.*.tmp`` files (and staged folders) next to ``target`` whose
    writer process is gone (and pid-less ``.NAME.*.tmp`` ones older than a day); returns
    what was removed."""
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
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
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


def file_mode(target: Path) -> int:
    """The existing file's permissions, else ``0o666`` minus the process umask."""
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


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
