"""Property-based fuzzing of the file loaders and CLI argument parsers (issue 11).

Every input either loads or raises the documented error type (ValueError; CliError or
argparse's error for parsers), and no loader ever unpickles: ``pickle`` and ``torch.load`` are
replaced by tripwires while the fuzz runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitalloc.search.budget import Budget
from bitalloc.search.formats import parse_formats
from bitalloc.search.frontier import Frontier
from bitalloc.search.solution import Solution
from bitalloc.search.space import SearchSpace, Unit
from bitalloc.search.table import SensitivityTable

EXAMPLES = int(os.environ.get("BITALLOC_FUZZ_EXAMPLES", "150"))  # per test; more for a long run
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
KEYS = ("int2-g32", "int4-g32", "int8-pc")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(autouse=True)
def _no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def tripwire(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a loader tried to unpickle")

    monkeypatch.setattr(pickle, "loads", tripwire)
    monkeypatch.setattr(pickle, "load", tripwire)
    monkeypatch.setattr(pickle, "Unpickler", tripwire)
    monkeypatch.setattr(torch, "load", tripwire)


def _table() -> SensitivityTable:
    units = tuple(Unit(f"m.l{i}", (32, 64), KEYS) for i in range(3))
    space = SearchSpace(units=units, formats=parse_formats(list(KEYS)))
    values = np.array([[4.0, 2.0, 1.0], [3.0, 1.5, 1.0], [5.0, 2.5, 1.0]])
    return SensitivityTable(space, values, "test")


def _plan() -> Solution:
    from bitalloc.solvers import SOLVERS

    return SOLVERS.get("ilp").solve(_table(), Budget.avg_bits(5.0))


def _mutate(doc: Any, path: list[int], value: Any) -> Any:
    """``doc`` with the node picked by ``path`` (indices into children) replaced by ``value``,
    or removed from its parent when ``value`` is the sentinel ``...``."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return None if value is ... else value
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    if len(path) == 1 and value is ...:
        del copy[key]
        return copy
    copy[key] = _mutate(doc[key], path[1:], value)
    return copy


mutations = st.tuples(
    st.lists(st.integers(0, 50), min_size=1, max_size=6), json_values | st.just(...)
)


def _load_or_refuse(load: Any, path: Path) -> None:
    """The property: ``load(path)`` returns, or raises ValueError (anything else fails)."""
    with contextlib.suppress(ValueError):
        load(path)


def _write(tmp: Path, name: str, doc: Any) -> Path:
    path = tmp / name
    path.write_text(json.dumps(doc, allow_nan=True))
    return path


@FUZZ
@given(mutation=mutations)
def test_plan_loader(tmp_path: Path, mutation: tuple[list[int], Any]) -> None:
    doc = _mutate(_plan().to_dict(), *mutation)
    path = _write(tmp_path, "plan.json", doc)
    try:
        sol = Solution.load(path)
    except ValueError:
        return
    sol.summary()  # a plan that loads can be shown
    assert sol.space.numel > 0


@FUZZ
@given(mutation=mutations)
def test_frontier_loader(tmp_path: Path, mutation: tuple[list[int], Any]) -> None:
    from bitalloc.search.api import frontier

    front = frontier(_table(), [3.0, 5.0], "ilp")
    doc = _mutate(front.to_dict(), *mutation)
    path = _write(tmp_path, "frontier.json", doc)
    _load_or_refuse(Frontier.load, path)


def _table_bytes() -> bytes:
    buf = io.BytesIO()
    t = _table()
    header = np.frombuffer(json.dumps(t.header()).encode(), dtype=np.uint8)
    np.savez(buf, values=t.values, header=header)
    return buf.getvalue()


@FUZZ
@given(
    cut=st.integers(0, 4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=4),
)
def test_table_loader_bytes(tmp_path: Path, cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(_table_bytes())
    for at, byte in flips:
        data[at % len(data)] = byte
    path = tmp_path / "t.npz"
    path.write_bytes(bytes(data[: max(0, len(data) - cut)]))
    _load_or_refuse(SensitivityTable.load, path)


@FUZZ
@given(mutation=mutations)
def test_table_loader_header(tmp_path: Path, mutation: tuple[list[int], Any]) -> None:
    header = _mutate(_table().header(), *mutation)
    path = tmp_path / "t.npz"
    raw = np.frombuffer(json.dumps(header, allow_nan=True).encode(), dtype=np.uint8)
    np.savez(path, values=_table().values, header=raw)
    _load_or_refuse(SensitivityTable.load, path)


@FUZZ
@given(mutation=mutations)
def test_evopress_checkpoint_loader(tmp_path: Path, mutation: tuple[list[int], Any]) -> None:
    from bitalloc.search.problem import Problem
    from bitalloc.solvers import EvoPressSolver
    from bitalloc.solvers._evo import check_state, load_state

    path = tmp_path / "ck.json"
    if not path.exists():
        EvoPressSolver(generations=1, start="uniform", checkpoint=path).solve(
            _table(), Budget.avg_bits(5.0)
        )
        (tmp_path / "good.json").write_text(path.read_text())
    good = json.loads((tmp_path / "good.json").read_text())
    doc = _mutate({k: v for k, v in good.items() if k != "run"}, *mutation)
    if isinstance(doc, dict):
        doc = {**doc, "run": good["run"], "version": doc.get("version", good["version"])}
    path.write_text(json.dumps(doc, allow_nan=True))
    problem = Problem.build(_table(), Budget.avg_bits(5.0))
    try:
        state = load_state(path, good["run"])
        assert state is not None
        check_state(state, problem, path)
    except ValueError:
        pass


budget_text = st.text(alphabet="0123456789.:,-+einfa ", max_size=16)


@FUZZ
@given(text=budget_text)
def test_budget_parser(text: str) -> None:
    from bitalloc.cli import CliError, parse_budgets

    try:
        budgets = parse_budgets(text)
    except (CliError, argparse.ArgumentTypeError):
        return
    assert budgets and all(0 < b < float("inf") for b in budgets)


@FUZZ
@given(text=st.text(alphabet="intfbp0123456789-gc,x ", max_size=20))
def test_format_parser(text: str) -> None:
    try:
        parse_formats(text)
    except ValueError:
        pass


@FUZZ
@given(pairs=st.lists(st.text(max_size=10), max_size=4))
def test_option_parser(pairs: list[str]) -> None:
    from bitalloc.cli import CliError
    from bitalloc.cli._common import key_values

    try:
        opts = key_values(pairs)
    except CliError:
        return
    assert len(opts) <= len(pairs)


@FUZZ
@given(
    argv=st.lists(
        st.sampled_from(
            [
                "search",
                "eval",
                "show",
                "frontier",
                "export",
                "pack",
                "study",
                "show",
                "--avg-bits",
                "--bytes",
                "-1",
                "nan",
                "inf",
                "3",
                "--out",
                "--to",
                "--formats",
                "int9-g0",
                "--solver",
                "x",
                "--budgets",
                "0:inf:1",
                "--seq-len",
                "0",
                "--port",
                "70000",
                "--",
            ]
        ),
        max_size=7,
    )
)
def test_cli_argument_parser(argv: list[str]) -> None:
    """Any argv either parses or makes argparse exit 2 (one usage line, no traceback)."""
    from bitalloc.cli import build_parser

    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        assert e.code in (0, 2)


@pytest.fixture(scope="module")
def packed_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from bitalloc.backends.packed import save_packed
    from bitalloc.solvers import SOLVERS
    from tests.conftest import make_tiny_llama

    model = make_tiny_llama()
    space = SearchSpace.from_model(model, ["int4-g32", "int8-pc"], tie=None)
    table = SensitivityTable(space, np.array([[2.0, 1.0]] * len(space)), "test")
    plan = SOLVERS.get("ilp").solve(table, Budget.avg_bits(6.0))
    path = tmp_path_factory.mktemp("packed") / "m.safetensors"
    save_packed(model, plan, path)
    return path.read_bytes()


@FUZZ
@given(
    cut=st.integers(0, 3000),
    flips=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), max_size=4),
)
def test_packed_checkpoint_loader(
    tmp_path: Path, packed_bytes: bytes, cut: int, flips: list[tuple[int, int]]
) -> None:
    """Flips land in the safetensors header (its JSON and the plan in its metadata)."""
    from bitalloc.backends.packed import read_packed

    data = bytearray(packed_bytes)
    for at, byte in flips:
        data[at % min(len(data), 3000)] = byte
    path = tmp_path / "m.safetensors"
    path.write_bytes(bytes(data[: max(0, len(data) - cut)]))
    _load_or_refuse(read_packed, path)
