"""Where a study lives: storage resolution, heartbeats and the retry of stale trials.

``resolve_storage(spec, name)`` turns what the user typed into a :class:`StorageSpec`:

- ``None``: the default, the journal file ``runs/<name>.journal`` (Optuna's append-only log
  with file locks; about 6x faster than SQLite for the same study, and safe for several
  worker processes on one machine; a record torn by a killed worker is cut off before the
  next append and an undecodable one is repaired on read, see :mod:`bitalloc.studies.journal`);
- a path ending in ``.journal`` / ``.log`` (or ``journal:PATH``): a journal file;
- a path ending in ``.db`` / ``.sqlite`` / ``.sqlite3``: an SQLite file (``sqlite:///PATH``);
- any SQLAlchemy URL Optuna's RDB storage accepts (``sqlite:///...``,
  ``postgresql://user:pass@host:5432/db``, ``mysql+pymysql://...``).

Every storage gets a heartbeat: a running trial records a timestamp every
``heartbeat_interval`` seconds; a trial silent for ``grace_period`` seconds (its worker was
killed) is marked FAIL by the next worker and
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`
puts a copy with the same params back in the queue. RDB storages implement this natively;
:func:`journal_storage` adds it to journal files (the timestamp is a trial system
attribute).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

DEFAULT_DIR = "runs"
JOURNAL_SUFFIXES = (".journal", ".log")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
HEARTBEAT_ATTR = "bitalloc_heartbeat"


@dataclass(frozen=True, slots=True)
class StorageOptions:
    """Heartbeat and retry settings shared by every storage kind.

    Args:
        heartbeat_interval: seconds between a running trial's heartbeats (>= 1).
        grace_period: seconds without a heartbeat after which a running trial is stale;
            ``None`` = ``2 * heartbeat_interval`` (Optuna's default).
        max_retry: how often a stale trial's params are re-queued (``None`` = no limit).
        sqlite_timeout: seconds an SQLite writer waits for the database lock.
    """

    heartbeat_interval: int = 10
    grace_period: int | None = None
    max_retry: int | None = 2
    sqlite_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.heartbeat_interval, int) or self.heartbeat_interval < 1:
            raise ValueError(
                f"`heartbeat_interval` must be an int >= 1, got {self.heartbeat_interval!r}"
            )
        if self.grace_period is not None and (
            not isinstance(self.grace_period, int) or self.grace_period <= self.heartbeat_interval
        ):
            raise ValueError(
                f"`grace_period` must be an int > heartbeat_interval ({self.heartbeat_interval})"
                f" or None, got {self.grace_period!r}"
            )
        if self.max_retry is not None and (
            not isinstance(self.max_retry, int) or self.max_retry < 0
        ):
            raise ValueError(f"`max_retry` must be an int >= 0 or None, got {self.max_retry!r}")

    @property
    def grace(self) -> int:
        return self.grace_period or 2 * self.heartbeat_interval


@dataclass(frozen=True, slots=True)
class StorageSpec:
    """A resolved storage: ``kind`` is ``"journal"`` or ``"rdb"``; ``target`` a path or URL.

    ``dashboard_arg`` is what ``optuna-dashboard`` takes as its storage argument.
    """

    kind: str
    target: str

    @property
    def dashboard_arg(self) -> str:
        return self.target

    def file(self) -> Path | None:
        """The local file this storage lives in (journal, SQLite), else ``None``."""
        if self.kind == "journal":
            return Path(self.target)
        if self.target.startswith("sqlite:///"):
            rest = self.target[len("sqlite:///") :].split("?", 1)[0]
            return Path(rest) if rest and not rest.startswith(":memory:") else None
        return None

    def describe(self) -> str:
        """The target with any password replaced by ``***``."""
        if self.kind != "rdb" or "@" not in self.target or "://" not in self.target:
            return self.target
        scheme, rest = self.target.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}{':***' if ':' in creds else ''}@{host}"


def resolve_storage(spec: str | os.PathLike[str] | None, name: str) -> StorageSpec:
    """Resolve a storage argument (see the module docstring) for the study ``name``."""
    if spec is None:
        return StorageSpec("journal", str(Path(DEFAULT_DIR) / f"{_safe(name)}.journal"))
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"`storage` must be a path, a URL or None, got {type(spec).__name__}")
    text = os.fspath(spec)
    if text.startswith("journal:"):
        return StorageSpec("journal", text[len("journal:") :])
    if "://" in text:
        return StorageSpec("rdb", _with_driver(text))
    if text.endswith(JOURNAL_SUFFIXES):
        return StorageSpec("journal", text)
    if text.endswith(SQLITE_SUFFIXES):
        return StorageSpec("rdb", f"sqlite:///{text}")
    raise ValueError(
        f"`storage` {text!r} is not understood: give a journal file (*.journal, *.log or "
        "journal:PATH), an SQLite file (*.db, *.sqlite) or a URL (sqlite:///..., "
        "postgresql://user@host/db)"
    )


def _with_driver(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2 defaults to psycopg 3, the
    studies extra installs psycopg2."""
    import importlib.util

    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix) and importlib.util.find_spec("psycopg") is None:
            if importlib.util.find_spec("psycopg2") is not None:
                return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def _safe(name: str) -> str:
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ValueError(f"study name {name!r} cannot name a file: no '/', '\\', leading '.'")
    return name


def open_storage(
    spec: StorageSpec | str | os.PathLike[str] | None,
    name: str = "study",
    options: StorageOptions | None = None,
    *,
    create: bool = True,
) -> optuna.storages.BaseStorage:
    """An Optuna storage with heartbeat and retry-on-stale for ``spec``.

    ``create=False`` (every command but ``study create``) refuses a journal or SQLite file
    that does not exist instead of creating an empty one. A storage that cannot be opened (an
    unreachable server, a file that is not a database) raises ValueError naming it.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import SQLAlchemyError

    opts = options or StorageOptions()
    if not isinstance(spec, StorageSpec):
        spec = resolve_storage(spec, name)
    if not create:
        path = spec.file()
        if path is not None and not path.is_file():
            raise ValueError(
                f"`storage` {str(path)!r} does not exist (a study is made with `study create`)"
            )
    with warnings.catch_warnings():  # the heartbeat API is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return _open(spec, opts, RetryHeartbeatStaleTrialCallback(max_retry=opts.max_retry))
        except (SQLAlchemyError, OSError) as e:  # unreachable server, not a database
            reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            raise ValueError(f"cannot open `storage` {spec.describe()}: {reason}") from None


def _open(spec: StorageSpec, opts: StorageOptions, retry: Callable[..., None]) -> Any:
    from optuna.storages import RDBStorage

    if spec.kind == "journal":
        Path(spec.target).parent.mkdir(parents=True, exist_ok=True)
        return journal_storage(spec.target, opts, retry)
    engine: dict[str, Any] = {}
    if spec.target.startswith("sqlite:///"):
        path = Path(spec.target[len("sqlite:///") :])
        if str(path) and not str(path).startswith(":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": opts.sqlite_timeout}}
    elif spec.target.startswith("postgresql"):
        engine = {"pool_pre_ping": True}
    storage = RDBStorage(
        spec.target,
        engine_kwargs=engine,
        heartbeat_interval=opts.heartbeat_interval,
        grace_period=opts.grace,
        heartbeat_stale_trial_callback=retry,
    )
    if storage.engine.name == "sqlite":
        _immediate_transactions(storage.engine)
    return storage


def _immediate_transactions(engine: Any) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE`` (SQLAlchemy's pysqlite recipe).

    Optuna claims a WAITING trial with ``SELECT ... FOR UPDATE`` then ``UPDATE``; SQLite
    ignores ``FOR UPDATE`` and Python's sqlite3 starts the transaction only at the UPDATE, so
    two processes can both read WAITING and both run the trial (measured: 4 threads on 40
    queued trials claimed some twice). Taking the write lock at BEGIN serialises the claim.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections were opened before the listeners


_JOURNAL_CLASS: list[type] = []


def journal_storage(
    path: str, opts: StorageOptions, retry: Callable[..., None] | None = None
) -> optuna.storages.BaseStorage:
    """A journal-file storage speaking Optuna's heartbeat protocol: ``record_heartbeat``
    writes the time as a trial system attribute, ``_get_stale_trial_ids`` lists running
    trials silent for longer than the grace period (or, before their first beat, since
    their start)."""
    if not _JOURNAL_CLASS:
        _JOURNAL_CLASS.append(_make_heartbeat_journal())
    return _JOURNAL_CLASS[0](path, opts, retry)


def _make_heartbeat_journal() -> type:
    from optuna.storages import JournalStorage

    # Optuna's heartbeat protocol lives in a private module; optuna is pinned (extra "studies").
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.trial import TrialState

    from bitalloc.studies.journal import SafeJournalFileBackend

    class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
        def __init__(
            self, path: str, opts: StorageOptions, retry: Callable[..., None] | None
        ) -> None:
            self.path = path  # before the first replay, which may need it for its error
            super().__init__(SafeJournalFileBackend(path))
            self._interval = opts.heartbeat_interval
            self._grace = opts.grace
            self._retry = retry

        def _sync_with_backend(self) -> None:
            try:
                super()._sync_with_backend()
            except (KeyError, IndexError, TypeError, ValueError, AssertionError) as e:
                raise ValueError(
                    f"the study journal {self.path!r} holds a record Optuna cannot replay "
                    f"({type(e).__name__}: {e}): it was edited or damaged; restore a backup"
                ) from None

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            stale = []
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                beat = t.system_attrs.get(HEARTBEAT_ATTR)
                if beat is None and t.datetime_start is not None:
                    beat = t.datetime_start.timestamp()
                if beat is not None and now - float(beat) > self._grace:
                    stale.append(t._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self._interval

        def get_heartbeat_stale_trial_callback(self) -> Callable[..., None] | None:
            return self._retry

    return HeartbeatJournalStorage
