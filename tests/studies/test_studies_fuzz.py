"""Fuzzed study storage files (issue 11): a journal or SQLite file with flipped bytes or a
cut tail either opens, or ``study show`` / ``study show --plan`` exit 2 with one line; nothing
is unpickled and no traceback escapes."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_fuzz_loaders import FUZZ, _no_unpickling  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def stored(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A finished two-point sweep on the tiny model, as journal and as SQLite file bytes."""
    from bitalloc.studies.objective import PlanObjective
    from bitalloc.studies.study import StudyConfig, create_study
    from bitalloc.studies.worker import run_worker

    cfg = StudyConfig(
        model=str(tiny_model_dir),
        estimators=("weight_error",),
        seq_len=32,
        n_windows=2,
        n_calib=2,
        corpus="lee",
        kind="sweep",
        budgets=(3.0, 4.0),
        solvers=("greedy",),
    )
    folder = tmp_path_factory.mktemp("fuzz-study")
    out = {}
    for kind, name in (("journal", "s.journal"), ("sqlite", "s.db")):
        path = folder / name
        url = str(path) if kind == "journal" else f"sqlite:///{path}"
        study = create_study("fz", cfg, url)
        run_worker(study, PlanObjective.from_config(cfg))
        out[kind] = path.read_bytes()
    return out


def _show(path: Path, *extra: str) -> None:
    """The property: exit 0, or exit 2 with one line on stderr and no traceback."""
    from bitalloc.cli import main

    err = io.StringIO()
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # a repaired journal warns (and keeps a backup)
        code = main(["study", "show", "fz", "--storage", str(path), *extra])
    text = err.getvalue().strip()
    assert code in (0, 2), text
    if code == 2:
        assert text.count("\n") == 0 and "Traceback" not in text, text


@FUZZ
@given(
    kind=st.sampled_from(["journal", "sqlite"]),
    cut=st.integers(0, 20_000),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=4),
    plan=st.booleans(),
)
def test_damaged_study_storage_opens_or_is_refused(
    stored: dict[str, bytes],
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    cut: int,
    flips: list[tuple[int, int]],
    plan: bool,
) -> None:
    data = bytearray(stored[kind])
    for at, byte in flips:
        data[at % len(data)] = byte
    folder = tmp_path_factory.mktemp("damaged")
    path = folder / ("s.journal" if kind == "journal" else "s.db")
    path.write_bytes(bytes(data[: max(0, len(data) - cut % max(1, len(data)))]))
    storage = str(path) if kind == "journal" else f"sqlite:///{path}"
    extra = ("--plan", "0", "--out", str(folder / "p.json")) if plan else ()
    _show(Path(storage) if kind == "journal" else storage, *extra)  # type: ignore[arg-type]
