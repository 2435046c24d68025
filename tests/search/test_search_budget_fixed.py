"""Whole-artifact byte budgets: ``Budget.bytes(n, fixed=f)`` gives the searched units ``n - f``
bytes; the exact solvers meet it as brute force does, and a budget below ``f`` is a result."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bitalloc.search.api import solve
from bitalloc.search.budget import Budget
from bitalloc.search.formats import parse_formats
from bitalloc.search.solution import Status
from bitalloc.search.space import SearchSpace, Unit
from bitalloc.search.table import SensitivityTable

KEYS = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")


def table(seed: int = 0) -> SensitivityTable:
    units = tuple(Unit(f"u{i}", (64, 128 * (1 + i % 2)), KEYS) for i in range(5))
    space = SearchSpace(units=units, formats=parse_formats(KEYS))
    rng = np.random.default_rng(seed)
    loss = np.sort(rng.uniform(0, 1, (len(units), len(KEYS))), axis=1)[:, ::-1].copy()
    return SensitivityTable(space, loss, "test")


def brute(t: SensitivityTable, capacity_bytes: float) -> float:
    nb = t.space.nbytes_matrix()
    best = np.inf
    for combo in itertools.product(range(len(KEYS)), repeat=len(t.space)):
        if sum(nb[i, j] for i, j in enumerate(combo)) <= capacity_bytes:
            best = min(best, sum(t.values[i, j] for i, j in enumerate(combo)))
    return best


def test_fixed_bytes_leave_the_rest_to_the_units() -> None:
    t = table()
    b = Budget.bytes(100_000, fixed=60_000)
    assert b.capacity_bits(t.space) == 40_000 * 8
    assert b.from_bits(8 * 1000, t.space) == 61_000  # whole-artifact bytes
    assert Budget.from_dict(b.to_dict()) == b and b.to_dict()["fixed"] == 60_000
    assert "60,000 outside the searched units" in b.describe()
    assert Budget.from_dict(Budget.bytes(5).to_dict()).fixed == 0


@pytest.mark.parametrize("solver", ["ilp", "brute_force"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_solvers_meet_a_whole_budget_like_brute_force(solver: str, seed: int) -> None:
    t = table(seed)
    nb = t.space.nbytes_matrix()
    fixed = 12_345
    units_bytes = float(nb[:, 1].sum() + nb[:2, 2].sum() - nb[:2, 1].sum())
    sol = solve(t, Budget.bytes(fixed + units_bytes, fixed=fixed), solver)
    assert sol.status in (Status.OPTIMAL, Status.FEASIBLE) and sol.nbytes <= units_bytes
    assert sol.objective == pytest.approx(brute(t, units_bytes))
    same = solve(t, Budget.bytes(units_bytes), solver)
    assert same.choice == sol.choice


def test_a_budget_below_the_fixed_bytes_is_infeasible_with_the_minimum() -> None:
    t = table()
    nb = t.space.nbytes_matrix()
    fixed = 50_000
    sol = solve(t, Budget.bytes(fixed + nb[:, 0].sum() - 1, fixed=fixed), "ilp")
    assert sol.status is Status.INFEASIBLE
    assert f"{fixed + nb[:, 0].sum():.6g}" in sol.message  # the whole-artifact minimum


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Budget.bytes(10, fixed=-1), "`fixed` must be >= 0"),
        (lambda: Budget.bytes(10, fixed=float("nan")), "`fixed` must be a finite number"),
        (lambda: Budget("avg_bits", 3.0, (), 5.0), "apply to byte budgets only"),
    ],
)
def test_bad_fixed_bytes_are_named(make, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        make()
