"""A journal file that survives a writer killed mid-record.

Optuna's :class:`~optuna.storages.journal.JournalFileBackend` appends one JSON record per
line under a file lock. A worker killed by SIGKILL in the middle of an append leaves a torn
last line (no newline). Optuna's reader skips a torn last line, but the next append glues its
record onto the torn bytes, which makes one undecodable line in the middle of the file; from
then on every read raises ``JSONDecodeError`` and every finished trial is unreadable.

:class:`SafeJournalFileBackend` closes both doors:

- **before every append**, under the journal lock (so no other writer is mid-record), a last
  line without a newline is cut off. Its bytes go to ``PATH.torn-<time>`` and a warning says
  so. A torn record was never complete, so no reader ever applied it; cutting it changes
  nothing anyone saw.
- **on read**, a line that does not decode (a file written by a backend without the first
  rule, or damaged on disk) triggers a repair under the lock: the whole file is backed up to
  ``PATH.corrupt-<time>``, each bad line is replaced by the complete record at its end when
  there is one (the torn prefix is dropped) or removed, and the file is replaced atomically.
  Reading then goes on from where it stopped.

The lock is an ``fcntl.flock`` on ``PATH.flock``: the kernel drops it when its holder dies, so
the worker after a SIGKILL goes on at once (Optuna's default symlink lock is left behind by a
killed writer and is broken only after 30 s). ``flock`` needs a local file system; journal
files on NFS should use Optuna's own backend or an RDB storage.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import warnings
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

from optuna.storages.journal import JournalFileBackend

RECORD_START = b'{"op_code":'


class JournalRepairWarning(RuntimeWarning):
    """A journal file had a torn or undecodable record that was cut off or repaired."""


class FlockLock:
    """An exclusive ``fcntl.flock`` on ``PATH.flock``, released by the kernel if the holder
    dies (the lock protocol :class:`JournalFileBackend` calls: ``acquire``/``release``)."""

    def __init__(self, path: str) -> None:
        self.path = f"{path}.flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError(f"journal lock {self.path} is not held")
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class SafeJournalFileBackend(JournalFileBackend):
    """:class:`JournalFileBackend` that heals torn tails before appending and repairs
    undecodable records on read (see the module docstring)."""

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path, lock_obj=FlockLock(file_path))  # type: ignore[arg-type]
        self.path = file_path

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with self._locked():
            self._cut_torn_tail()
            with open(self.path, "ab") as f:
                f.write(data.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        number = log_number_from
        repaired = False
        while True:
            try:
                for log in super().read_logs(number):
                    number += 1
                    yield log
                return
            except ValueError:  # JSONDecodeError, UnicodeDecodeError, "Invalid log format."
                if repaired:
                    raise
                with self._locked():
                    self._repair()
                self._log_number_offset = {0: 0}  # lines may have moved
                repaired = True

    def _cut_torn_tail(self) -> None:
        """Cut a last line without a newline (held lock: its writer is dead)."""
        size = os.path.getsize(self.path)
        if size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            keep = _last_newline_end(f, size)
            f.seek(keep)
            torn = f.read()
            backup = _backup_name(self.path, "torn")
            with open(backup, "wb") as out:
                out.write(torn)
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        warnings.warn(
            f"journal {self.path}: cut a torn last record ({len(torn)} bytes, a writer killed "
            f"mid-append); its bytes are in {backup}",
            JournalRepairWarning,
            stacklevel=3,
        )

    def _repair(self) -> None:
        """Rewrite the file with every complete line decodable (held lock)."""
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, else a torn record
        if not lines or not _decodes(lines[0]) or b'"op_code"' not in lines[0]:
            raise ValueError(
                f"{self.path!r} is not an Optuna journal file: its first record does not decode"
            )
        kept: list[bytes] = []
        salvaged = dropped = 0
        for line in lines:
            if _decodes(line):
                kept.append(line)
                continue
            rescue = _complete_suffix(line)
            if rescue is None:
                dropped += 1
            else:
                kept.append(rescue)
                salvaged += 1
        if not salvaged and not dropped:
            return  # another process repaired it first
        backup = _backup_name(self.path, "corrupt")
        with open(backup, "wb") as out:
            out.write(data)
        body = b"".join(line + b"\n" for line in kept) + tail
        tmp = f"{self.path}.repair.tmp"
        with open(tmp, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        warnings.warn(
            f"journal {self.path}: repaired {salvaged + dropped} undecodable record(s) "
            f"({salvaged} kept from their last complete record, {dropped} removed); the "
            f"original is in {backup}",
            JournalRepairWarning,
            stacklevel=3,
        )


def _decodes(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _complete_suffix(line: bytes) -> bytes | None:
    """The record glued after a torn prefix: the last decodable ``{"op_code":...`` suffix."""
    start = line.rfind(RECORD_START)
    while start > 0:
        if _decodes(line[start:]):
            return line[start:]
        start = line.rfind(RECORD_START, 0, start)
    return None


def _last_newline_end(f: Any, size: int) -> int:
    """Offset just past the last newline of the open file ``f`` of ``size`` bytes (0: none)."""
    block = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        chunk = f.read(end - start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def _backup_name(path: str, what: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{path}.{what}-{stamp}"
    n = 1
    while os.path.exists(name):
        n += 1
        name = f"{path}.{what}-{stamp}-{n}"
    return name
