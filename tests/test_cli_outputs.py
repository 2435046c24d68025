"""Output paths and storages that cannot work are refused with exit 2 and one line, before
any work starts and without writing anything (issue 11: D4, D5, D13, D14, D15)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from bitalloc.cli import main


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    """A plain file: a path under it is in a missing (impossible) folder."""
    path = tmp_path / "blocker"
    path.write_text("x")
    return path


@pytest.fixture
def saved_plan(tmp_path: Path) -> Path:
    import numpy as np

    from bitalloc.search.budget import Budget
    from bitalloc.search.formats import parse_formats
    from bitalloc.search.space import SearchSpace, Unit
    from bitalloc.search.table import SensitivityTable
    from bitalloc.solvers import SOLVERS

    keys = ("int4-g32", "int8-g32")
    units = (Unit("m.a", (64, 64), keys), Unit("m.b", (64, 64), keys))
    space = SearchSpace(units=units, formats=parse_formats(list(keys)))
    table = SensitivityTable(space, np.array([[2.0, 1.0], [3.0, 1.0]]), "test")
    sol = SOLVERS.get("ilp").solve(table, Budget.avg_bits(6.0))
    path = tmp_path / "plan.json"
    sol.save(path)
    return path


def test_search_checkpoint_that_is_a_folder_is_refused_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["search", "--model", "no-such-model", "--avg-bits", "3", "-q", "--out"]
    argv = [*args, str(tmp_path / "p.json"), "--solver", "evopress", "--checkpoint", str(tmp_path)]
    assert main(argv) == 2
    _one_line_error(capsys, "--checkpoint", "is a directory")


@pytest.mark.parametrize("bad", ["folder", "missing"])
def test_export_bad_outputs_write_nothing(
    saved_plan: Path, tmp_path: Path, blocker: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    target = str(tmp_path) if bad == "folder" else str(blocker / "x.json")
    side = tmp_path / "fixed.json"
    argv = ["export", str(saved_plan), "--to", "torchao", "-o", target, "--save-plan", str(side)]
    assert main(argv) == 2
    _one_line_error(capsys, "-o/--out")
    assert not side.exists()  # D5: no side file when the command fails
    assert main(["export", str(saved_plan), "--to", "torchao", "--save-plan", str(tmp_path)]) == 2
    _one_line_error(capsys, "--save-plan", "is a directory")


def test_export_writes_the_side_plan_after_the_export(
    saved_plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, side = tmp_path / "cfg.json", tmp_path / "fixed.json"
    argv = ["export", str(saved_plan), "--to", "torchao", "-o", str(out), "--save-plan", str(side)]
    assert main(argv) == 0
    assert out.is_file() and side.is_file()


def test_frontier_out_that_is_a_file_is_refused_before_loading(
    blocker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["frontier", "--model", "no-such-model", "--budgets", "3,4", "--out", str(blocker)]
    assert main(argv) == 2
    _one_line_error(capsys, "--out", "is a file")
    assert main([*argv[:-1], str(blocker / "sub")]) == 2
    _one_line_error(capsys, "cannot create files under")


def test_study_storages_that_cannot_open_exit_2_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing_journal = tmp_path / "typo.journal"
    assert main(["study", "show", "s", "--storage", str(missing_journal)]) == 2
    _one_line_error(capsys, "does not exist")
    missing_db = tmp_path / "typo.db"
    assert main(["study", "show", "s", "--storage", str(missing_db)]) == 2
    _one_line_error(capsys, "does not exist")
    assert main(["study", "dashboard", "--storage", str(missing_db)]) == 2
    _one_line_error(capsys, "does not exist")
    assert not missing_journal.exists() and not missing_db.exists()  # D13

    not_db = tmp_path / "notes.db"
    not_db.write_bytes(b"these are my notes, not a database\n" * 100)
    before = not_db.read_bytes()
    assert main(["study", "show", "s", "--storage", str(not_db)]) == 2
    _one_line_error(capsys, "cannot open `storage`")
    not_journal = tmp_path / "notes.journal"
    not_journal.write_bytes(before)
    assert main(["study", "show", "s", "--storage", str(not_journal)]) == 2
    _one_line_error(capsys, "not an Optuna journal")
    assert not_db.read_bytes() == before and not_journal.read_bytes() == before

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"postgresql://nobody@127.0.0.1:{port}/db"
    assert main(["study", "show", "s", "--storage", url]) == 2
    _one_line_error(capsys, "cannot open `storage` postgresql")


def test_study_show_plan_out_is_checked_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["study", "show", "s", "--storage", str(tmp_path / "x.journal"), "--plan", "0"]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "--out", "is a directory")


def test_dashboard_port_in_use_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "s.journal"
    journal.write_text("")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["study", "dashboard", "--storage", str(journal), "--port", str(port)]) == 2
    _one_line_error(capsys, f"`port` {port}", "not free")


def test_pickle_model_folder_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    argv = ["search", "--model", str(folder), "--avg-bits", "3", "-q", "--no-cache"]
    assert main([*argv, "--out", str(tmp_path / "p.json")]) == 2
    _one_line_error(capsys, "safetensors", "never unpickles")
    assert not marker.exists()


def test_stale_temp_files_of_dead_writers_are_removed_on_the_next_write(tmp_path: Path) -> None:
    import subprocess
    import sys

    from bitalloc.search._io import atomic_write_text

    target = tmp_path / "plan.json"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".plan.json.{dead.stdout.strip()}.abc123.tmp"
    stale.write_bytes(b"half a plan")
    live = tmp_path / f".plan.json.{os.getpid()}.def456.tmp"  # a write in progress here
    live.write_bytes(b"busy")
    other = tmp_path / f".other.json.{dead.stdout.strip()}.x.tmp"  # another target's
    other.write_bytes(b"not ours")
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    assert not stale.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["plan.json", live.name, other.name]
    )


def test_a_failed_set_write_leaves_every_old_file(tmp_path: Path) -> None:
    from bitalloc.search._io import atomic_write_set

    a, b = tmp_path / "a.json", tmp_path / "b.csv"
    a.write_text("old a")
    b.write_text("old b")

    def fail(path: Path) -> None:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_set({a: lambda p: p.write_text("new a"), b: fail})
    assert a.read_text() == "old a" and b.read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.csv"]
    atomic_write_set({a: lambda p: p.write_text("new a"), b: lambda p: p.write_text("new b")})
    assert a.read_text() == "new a" and b.read_text() == "new b"


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "file-by-file"])
def test_folder_set_write_keeps_other_files_and_replaces_the_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: bool
) -> None:
    """The frontier folder is written as one set (staged, then exchanged); the folder's
    other files and sub-folders survive with their data, and nothing staged is left."""
    from bitalloc.search import _io

    if not swap:  # a file system without RENAME_EXCHANGE: the per-file fallback

        def no_exchange(a: Path, b: Path) -> None:
            raise _io._CannotSwap(22, "no exchange here")

        monkeypatch.setattr(_io, "_exchange", no_exchange)
    out = tmp_path / "front"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "n.txt").write_text("mine")
    (out / "README").write_text("keep me")
    (out / "a.json").write_text("old a")
    dead = tmp_path / ".front.999999999.x.tmp"  # a staged folder of a killed writer
    dead.mkdir()
    (dead / "a.json").write_text("half")
    written = _io.atomic_write_folder(
        out, {"a.json": lambda p: p.write_text("new a"), "b.csv": lambda p: p.write_text("b")}
    )
    assert written == [out / "a.json", out / "b.csv"]
    assert (out / "a.json").read_text() == "new a" and (out / "b.csv").read_text() == "b"
    assert (out / "README").read_text() == "keep me"
    assert (out / "notes" / "n.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front"]
    fresh = tmp_path / "new-front"  # a folder that did not exist is renamed into place
    _io.atomic_write_folder(fresh, {"a.json": lambda p: p.write_text("x")})
    assert [p.name for p in fresh.iterdir()] == ["a.json"]


def test_a_failed_folder_set_write_leaves_the_old_folder(tmp_path: Path) -> None:
    from bitalloc.search._io import atomic_write_folder

    out = tmp_path / "front"
    out.mkdir()
    (out / "a.json").write_text("old a")

    def fail(path: Path) -> None:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_folder(out, {"a.json": lambda p: p.write_text("new"), "b.csv": fail})
    assert [p.name for p in out.iterdir()] == ["a.json"]
    assert (out / "a.json").read_text() == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front"]


def test_study_create_refuses_budgets_the_formats_cannot_meet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11 D12: ``--budgets 50`` is refused at create time, no storage is written."""
    storage = tmp_path / "s.journal"
    argv = [
        "study",
        "create",
        "s",
        "--model",
        "tiny",
        "--kind",
        "budget-sweep",
        "--storage",
        str(storage),
    ]
    for budgets in ("50", "1.0,3", "3,16.5"):
        assert main([*argv, "--budgets", budgets]) == 2
        _one_line_error(capsys, "`budgets`", "outside what `formats`")
    assert not storage.exists()
