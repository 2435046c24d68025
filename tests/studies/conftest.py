"""Study fixtures: a real PostgreSQL server, tiny study configurations, worker subprocesses.

PostgreSQL: ``BITALLOC_TEST_POSTGRES_URL`` when set (``.ci/run`` starts a server with
``.ci/postgres.sh``); otherwise, when the PostgreSQL binaries are installed, the fixture starts
a throwaway server with the same script. With neither, the PostgreSQL tests fail under CI
(``CI=true``) and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "postgres.sh"
URL_VAR = "BITALLOC_TEST_POSTGRES_URL"


def _have_postgres() -> bool:
    return shutil.which("initdb") is not None or any(
        Path("/usr/lib/postgresql").glob("*/bin/initdb")
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a real PostgreSQL database for the study storage tests."""
    url = os.environ.get(URL_VAR)
    if url:
        yield url
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{URL_VAR} is not set under CI: .ci/run must start PostgreSQL")
    if not _have_postgres():
        pytest.skip(f"no PostgreSQL: set {URL_VAR} or install postgresql (initdb)")
    out = subprocess.run(
        ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        pytest.fail(f".ci/postgres.sh start failed: {out.stderr[-2000:]}")
    env = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines())
    try:
        yield env[URL_VAR]
    finally:
        subprocess.run(
            ["bash", str(SCRIPT), "stop", env["BITALLOC_TEST_POSTGRES_DIR"]],
            capture_output=True,
            timeout=120,
        )


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny-model trials run 100x slower with 2 threads on busy shared cores (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def study_name() -> str:
    """A name no other test (or earlier run on the same database) uses."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def tiny_config(tiny_model_dir):
    """``tiny_config(**changes)``: a StudyConfig on the tiny model, milliseconds per trial."""
    from bitalloc.studies.study import StudyConfig

    def make(**changes):
        base = {
            "model": str(tiny_model_dir),
            "estimators": ("weight_error",),
            "seq_len": 32,
            "n_windows": 2,
            "n_calib": 2,
            "corpus": "lee",  # shorter than the held-out Wikipedia split: faster to tokenize
        }
        return StudyConfig(**{**base, **changes})

    return make


@pytest.fixture
def spawn(tmp_path):
    """``spawn(*argv)``: start ``python -m bitalloc *argv`` (or ``python -c CODE`` when the
    first arg is ``"-c"``) in ``tmp_path``; processes still running at teardown are killed."""
    procs: list[subprocess.Popen] = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"  # several workers share the cores

    def start(*argv: str) -> subprocess.Popen:
        cmd = (
            [sys.executable, *argv]
            if argv[0] == "-c"
            else [sys.executable, "-m", "bitalloc", *argv]
        )
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.fixture(params=["journal", "sqlite", "postgres"])
def storage_url(request, tmp_path) -> str:
    """The same study on each storage: a journal file, SQLite, the test PostgreSQL server."""
    if request.param == "journal":
        return str(tmp_path / "s.journal")
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 's.db'}"
    return request.getfixturevalue("postgres_url")
