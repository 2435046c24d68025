"""Budget validation, capacity, residual, and the tie-merged Problem."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bitalloc.search.budget import Budget, BudgetKind
from bitalloc.search.formats import parse_formats
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace, Unit
from bitalloc.search.table import SensitivityTable

FORMATS = parse_formats(["int2-g64", "int4-g64", "bf16"])


def small_space() -> SearchSpace:
    allowed = ("int2-g64", "int4-g64", "bf16")
    return SearchSpace(
        units=(
            Unit("a", (64, 128), allowed, tie="t"),
            Unit("b", (128, 64), allowed, tie="t"),
            Unit("c", (64, 64), allowed[1:]),
        ),
        formats=FORMATS,
    )


def test_constructors_and_capacity() -> None:
    space = small_space()
    assert space.numel == 64 * 128 * 2 + 64 * 64
    b = Budget.avg_bits(3)
    assert b.kind is BudgetKind.AVG_BITS and b.value == 3.0
    assert b.capacity_bits(space) == 3.0 * space.numel
    assert Budget.bytes(1000).capacity_bits(space) == 8000.0
    assert b.from_bits(6.0 * space.numel, space) == 6.0
    assert Budget.bytes(10).from_bits(80, space) == 10
    assert Budget("bytes", 5).kind is BudgetKind.BYTES
    assert Budget.from_dict(b.to_dict()) == b
    assert b.describe() == "3 avg bits" and Budget.bytes(1234).describe() == "1,234 bytes"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Budget.avg_bits(0), "`avg_bits`"),
        (lambda: Budget.avg_bits(-1), "`avg_bits`"),
        (lambda: Budget.avg_bits(33), "`avg_bits`"),
        (lambda: Budget.bytes(0), "`bytes`"),
        (lambda: Budget.avg_bits(math.nan), "finite"),
        (lambda: Budget.bytes(math.inf), "finite"),
        (lambda: Budget(BudgetKind.AVG_BITS, True), "finite number"),
        (lambda: Budget(BudgetKind.AVG_BITS, "3"), "finite number"),
        (lambda: Budget("volume", 3.0), "volume"),
    ],
)
def test_invalid_budgets(make, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        make()


def test_residual_is_exact() -> None:
    space = small_space()
    sol = Solution(space=space, choice=("int4-g64", "int4-g64", "bf16"), status=Status.FEASIBLE)
    nbytes = 2 * (4096 + 128 * 2 + 64) + 64 * 64 * 2  # codes + scales + zeros, twice; bf16
    assert sol.nbytes == nbytes
    assert Budget.bytes(nbytes).residual(sol) == 0
    assert Budget.bytes(nbytes - 1).residual(sol) == -8
    assert Budget.avg_bits(16).residual(sol) == 16 * space.numel - 8 * nbytes
    assert sol.avg_bits == 8 * nbytes / space.numel


def test_problem_merges_ties() -> None:
    space = small_space()
    values = np.array([[3.0, 1.0, 0.1], [5.0, 2.0, 0.2], [np.inf, 4.0, 0.5]])
    table = SensitivityTable(space=space, values=values, estimator="t")
    p = Problem.build(table, Budget.avg_bits(5.0))
    assert p.members == ((0, 1), (2,))
    assert p.values[0].tolist() == [8.0, 3.0, pytest.approx(0.3)]
    assert p.values[1, 0] == np.inf and p.costs[1, 0] == np.inf
    nb = space.nbytes_matrix()
    assert p.costs[0, 1] == 8 * (nb[0, 1] + nb[1, 1])
    assert p.capacity == 5.0 * space.numel
    assert p.cheapest().tolist() == [0, 1]
    assert p.min_cost() == 8 * (nb[0, 0] + nb[1, 0] + nb[2, 1])
    assert p.max_cost() == 8 * nb[:, 2].sum()
    assert p.expand(np.array([1, 2])).tolist() == [1, 1, 2]
    assert p.total(np.array([1, 2])) == (3.5, float(8 * (nb[0, 1] + nb[1, 1] + nb[2, 2])))
    assert p.fits(p.cheapest()) and not p.fits(np.array([2, 2]))
    assert not p.fits(np.array([1, 0]))  # option not allowed for group 1
