"""near_plans: distinct feasible plans around the budget, the exact optimum first, seeded."""

from __future__ import annotations

import pytest
from contracts.solver import budget_between, random_table

from bitalloc.solvers import SOLVERS
from bitalloc.solvers.sampling import near_plans

FORMATS = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")


def test_plans_are_distinct_feasible_and_start_with_the_optimum() -> None:
    table = random_table(7, n_units=20, formats=FORMATS, ties=(3,), mask_prob=0.1)
    budget = budget_between(table, 0.4)
    plans = near_plans(table, budget, 24, seed=0)
    assert len(plans) == 24
    assert len({p.choice for p in plans}) == 24
    assert plans[0].choice == SOLVERS.get("ilp").solve(table, budget).choice
    origins = [p.meta.get("sample") for p in plans[1:]]
    assert {"mutation", "random_mix"} <= set(origins)
    for p, origin in zip(plans[1:], origins):
        if not str(origin).startswith("ilp+"):  # only the upward-shifted optima may exceed it
            assert budget.residual(p) >= 0, origin
        tied = [u for u in table.space.units if u.tie == table.space.units[0].tie]
        if table.space.units[0].tie is not None:
            assert len({p.assignment[u.name] for u in tied}) == 1


def test_same_seed_same_plans() -> None:
    table = random_table(8, n_units=14, formats=FORMATS, ties=())
    budget = budget_between(table, 0.5)
    a = [p.choice for p in near_plans(table, budget, 16, seed=3)]
    b = [p.choice for p in near_plans(table, budget, 16, seed=3)]
    c = [p.choice for p in near_plans(table, budget, 16, seed=4)]
    assert a == b and a != c


def test_infeasible_budget_gives_no_plans_and_bad_n_is_refused() -> None:
    from bitalloc.search.budget import Budget

    table = random_table(9, n_units=6, formats=FORMATS, ties=())
    assert near_plans(table, Budget.avg_bits(0.5), 8) == []
    with pytest.raises(ValueError, match="`n` must be an int >= 1"):
        near_plans(table, Budget.avg_bits(4.0), 0)
