"""Serve optuna-dashboard against a study's storage, bound to 127.0.0.1 by default.

``Dashboard.start(storage)`` launches the ``optuna-dashboard`` command (pyproject extra
``studies``) as a subprocess on a free port, waits until ``/api/studies`` answers, and
:meth:`Dashboard.stop` terminates it (a context manager does both). The study list is at
``<url>/dashboard``, a study's Pareto front and history at ``<url>/dashboard/studies/<id>``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .storage import StorageSpec, resolve_storage

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port(host: str, port: int) -> None:
    """Refuse a port outside 1..65535 or one something already listens on."""
    if not 0 < port < 65536:
        raise ValueError(f"`port` must be in 1..65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f"`port` {port} on {host} is not free: {e.strerror}") from None


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (Linux prctl)."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def dashboard_command() -> list[str]:
    """The ``optuna-dashboard`` executable next to this Python, else on ``PATH``."""
    exe = Path(sys.executable).parent / "optuna-dashboard"
    found = str(exe) if exe.exists() else shutil.which("optuna-dashboard")
    if found is None:
        raise RuntimeError("optuna-dashboard is not installed; pip install 'bitalloc[studies]'")
    return [found]


class Dashboard:
    """A running optuna-dashboard process; ``url`` is its base address."""

    def __init__(self, process: subprocess.Popen[bytes], host: str, port: int, log: Path):
        self.process = process
        self.host = host
        self.port = port
        self.log = log
        self.url = f"http://{host}:{port}"

    @classmethod
    def start(
        cls,
        storage: StorageSpec | str,
        *,
        name: str = "study",
        host: str = LOCALHOST,
        port: int | None = None,
        timeout: float = 60.0,
        log: str | os.PathLike[str] | None = None,
    ) -> Dashboard:
        """Start serving ``storage`` (a spec, path or URL as in :func:`resolve_storage`).

        Raises RuntimeError when the server exits or does not answer within ``timeout`` s
        (the message holds the tail of its log).
        """
        spec = storage if isinstance(storage, StorageSpec) else resolve_storage(storage, name)
        path = spec.file()  # the dashboard would create a missing journal or SQLite file
        if path is not None and not path.is_file():
            raise ValueError(f"`storage` {str(path)!r} does not exist")
        if port is None:
            port = free_port(host)
        else:
            port = int(port)
            check_port(host, port)
        log_path = Path(log) if log is not None else _default_log(spec, port)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [*dashboard_command(), spec.dashboard_arg, "--host", host, "--port", str(port)]
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        server = cls(proc, host, port, log_path)
        server.wait_ready(timeout)
        return server

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """``(status, body)`` of an HTTP GET on the server (gzip accepted, as a browser)."""
        req = urllib.request.Request(self.url + path, headers={"Accept-Encoding": "gzip"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
                if resp.headers.get("Content-Encoding") == "gzip":
                    import gzip

                    body = gzip.decompress(body)
                return resp.status, body
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"optuna-dashboard exited with code {self.process.returncode}: {self._tail()}"
                )
            try:
                if self.get("/api/studies", timeout=2.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"optuna-dashboard did not answer within {timeout} s: {self._tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout`` s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _default_log(spec: StorageSpec, port: int) -> Path:
    if spec.kind == "journal":
        return Path(spec.target).with_name(f"dashboard-{port}.log")
    return Path("runs") / f"dashboard-{port}.log"
