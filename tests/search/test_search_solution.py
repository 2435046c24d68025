"""Solution: validation, JSON round trip, malformed files, atomic save."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bitalloc.search.formats import parse_formats
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace, Unit

FORMATS = parse_formats(["int2-g64", "int4-g64", "bf16"])


def make_solution(status: Status = Status.OPTIMAL) -> Solution:
    space = SearchSpace(
        units=(
            Unit("l0.q", (64, 64), ("int2-g64", "int4-g64"), tie="qk"),
            Unit("l0.k", (32, 64), ("int2-g64", "int4-g64"), tie="qk"),
            Unit("l0.o", (64, 128), ("int2-g64", "int4-g64", "bf16")),
        ),
        formats=FORMATS,
    )
    if status is Status.INFEASIBLE:
        return Solution(space=space, choice=(), status=status, message="below 2.3 avg bits")
    return Solution(
        space=space,
        choice=("int4-g64", "int4-g64", "bf16"),
        status=status,
        objective=0.125,
        message="ok",
        meta={"solver": "ilp", "gap": 0.0},
    )


def test_views() -> None:
    sol = make_solution()
    assert sol.success and sol.assignment["l0.o"].key == "bf16"
    assert sol.to_text() == "l0.q: int4-g64\nl0.k: int4-g64\nl0.o: bf16\n"
    assert "status: optimal" in sol.summary() and "solver=ilp" in sol.summary()
    assert sol.histogram()["bf16"]["units"] == 1
    frame = sol.to_frame()
    assert list(frame["format"]) == ["int4-g64", "int4-g64", "bf16"]


def test_json_round_trip(tmp_path: Path) -> None:
    sol = make_solution()
    loaded = Solution.load(sol.save(tmp_path / "plan.json"))
    assert loaded == sol
    assert json.loads((tmp_path / "plan.json").read_text())["bytes"] == sol.nbytes


def test_infeasible_round_trip(tmp_path: Path) -> None:
    sol = make_solution(Status.INFEASIBLE)
    loaded = Solution.load(sol.save(tmp_path / "plan.json"))
    assert loaded.status is Status.INFEASIBLE and loaded.choice == ()
    assert loaded.message == sol.message and math.isnan(loaded.objective)


@pytest.mark.parametrize(
    "choice, match",
    [
        (("int4-g64", "int4-g64"), "2 entries for 3 units"),
        (("int4-g64", "int4-g64", "int8-pc"), "cannot take format 'int8-pc'"),
        (("int4-g64", "int2-g64", "bf16"), "tie group 'qk'"),
    ],
)
def test_invalid_choices(choice: tuple[str, ...], match: str) -> None:
    space = make_solution().space
    with pytest.raises(ValueError, match=match):
        Solution(space=space, choice=choice, status=Status.FEASIBLE)
    with pytest.raises(ValueError, match="INFEASIBLE solution has no assignment"):
        Solution(space=space, choice=make_solution().choice, status=Status.INFEASIBLE)


def test_malformed_files(tmp_path: Path) -> None:
    good = make_solution().to_dict()
    cases = {
        "corrupt.json": "{not json",
        "type.json": json.dumps({**good, "type": "something.Else"}),
        "version.json": json.dumps({**good, "version": 42}),
        "units.json": json.dumps({**good, "assignment": {"l0.q": "int4-g64"}}),
        "missing.json": json.dumps({k: v for k, v in good.items() if k != "assignment"}),
        "list.json": json.dumps([1, 2]),
        "status.json": json.dumps({**good, "status": "great"}),
    }
    matches = {
        "corrupt.json": "not valid JSON",
        "type.json": "not a bitalloc plan",
        "version.json": "unsupported plan version",
        "units.json": "different units",
        "missing.json": "malformed plan",
        "list.json": "not a bitalloc plan",
        "status.json": "great",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=matches[name]):
            Solution.load(tmp_path / name)
    with pytest.raises(ValueError, match="cannot read plan"):
        Solution.load(tmp_path / "absent.json")


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "plan.json"
    target.write_text("OLD")
    real_write = Path.write_text

    def half_write(self: Path, text: str, *args: object, **kwargs: object) -> int:
        real_write(self, text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_write)
    with pytest.raises(OSError, match="disk full"):
        make_solution().save(target)
    monkeypatch.undo()
    assert target.read_text() == "OLD"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no stray temp file
    make_solution().save(target)
    assert Solution.load(target) == make_solution()
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_save_follows_umask_and_keeps_existing_mode(tmp_path: Path) -> None:
    import os

    from bitalloc.search._io import atomic_write_text

    old = os.umask(0o022)
    try:
        fresh = atomic_write_text(tmp_path / "a.json", "{}")
        assert fresh.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "b.json"
        kept.write_text("x")
        kept.chmod(0o600)
        atomic_write_text(kept, "{}")
        assert kept.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_deeply_nested_json_is_a_value_error(tmp_path: Path) -> None:
    """Issue 11 D9: ``[`` 100k times is not a RecursionError."""
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply|not valid JSON"):
        Solution.load(path)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        Solution.load(path)


@pytest.mark.parametrize(
    "shape", [[-64, 64], [0, 64], [64.7, 64], [1e30, 64], [], ["64", 64], [True, 64]]
)
def test_impossible_unit_shapes_are_refused_at_load(tmp_path: Path, shape: list) -> None:
    """Issue 11 D10: negative, zero, fractional, huge, empty or non-number shapes."""
    d = make_solution().to_dict()
    d["space"]["units"][0]["shape"] = shape
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="`shape` must be whole numbers"):
        Solution.load(path)


def test_whole_float_shapes_still_load(tmp_path: Path) -> None:
    d = make_solution().to_dict()
    d["space"]["units"][0]["shape"] = [float(x) for x in d["space"]["units"][0]["shape"]]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    assert Solution.load(path) == make_solution()
