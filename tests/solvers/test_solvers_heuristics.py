"""Greedy, uniform and brute force specifics, and the shared MCKP routines."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from contracts.solver import FORMATS4, FORMATS5, budget_between, oracle, random_table

from bitalloc.search.budget import Budget
from bitalloc.search.formats import parse_formats
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Status
from bitalloc.search.space import SearchSpace, Unit
from bitalloc.search.table import SensitivityTable
from bitalloc.solvers import SOLVERS, BruteForceSolver, GreedySolver, UniformSolver
from bitalloc.solvers._mckp import best_value_choice, greedy_choice, lp_bound, repair


def test_registry_lists_builtins() -> None:
    assert {"ilp", "greedy", "uniform", "brute_force"} <= set(SOLVERS.names())
    assert isinstance(SOLVERS.get("greedy"), GreedySolver)


# ---------------------------------------------------------------------- shared routines
def test_lp_bound_matches_scipy_linprog() -> None:
    from scipy.optimize import linprog

    for seed in range(12):
        table = random_table(seed, n_units=9, formats=FORMATS5, mask_prob=0.25, ties=(2,))
        problem = Problem.build(
            table, budget_between(table, 0.1 + 0.07 * seed, uniform_feasible=False)
        )
        gi, ji = np.nonzero(problem.allowed)
        a_eq = np.zeros((problem.n_groups, len(gi)))
        a_eq[gi, np.arange(len(gi))] = 1.0
        scale = table.space.numel
        res = linprog(
            problem.values[gi, ji],
            A_ub=problem.costs[gi, ji][None, :] / scale,
            b_ub=[problem.capacity / scale],
            A_eq=a_eq,
            b_eq=np.ones(problem.n_groups),
            bounds=(0, 1),
            method="highs",
        )
        assert res.status == 0
        assert math.isclose(lp_bound(problem), res.fun, rel_tol=1e-7, abs_tol=1e-12)


def test_repair_reaches_the_budget() -> None:
    table = random_table(8, n_units=8)
    problem = Problem.build(table, budget_between(table, 0.2))
    most = np.argmax(np.where(problem.allowed, problem.costs, -np.inf), axis=1)
    assert not problem.fits(most)
    fixed = repair(problem, most)
    assert problem.fits(fixed)
    assert np.array_equal(repair(problem, fixed), fixed)  # a fitting plan is left alone


def test_best_value_choice_breaks_ties_by_cost() -> None:
    space = SearchSpace(
        units=(Unit("a", (64, 64), FORMATS4[:2]),), formats=parse_formats(FORMATS4[:2])
    )
    table = SensitivityTable(space=space, values=np.array([[1.0, 1.0]]), estimator="t")
    assert best_value_choice(Problem.build(table, Budget.avg_bits(32))).tolist() == [0]


# ---------------------------------------------------------------------- greedy
def test_greedy_between_lp_bound_and_cheapest() -> None:
    for seed in range(10):
        table = random_table(seed, n_units=40, ties=(3, 2))
        budget = budget_between(table, 0.4)
        problem = Problem.build(table, budget)
        sol = GreedySolver().solve(table, budget)
        assert sol.status is Status.FEASIBLE
        assert lp_bound(problem) <= sol.objective * (1 + 1e-12)
        assert sol.objective <= problem.total(problem.cheapest())[0]


def test_greedy_fills_the_budget() -> None:
    """After greedy stops no single improving upgrade fits any more."""
    table = random_table(5, n_units=30)
    budget = budget_between(table, 0.5)
    problem = Problem.build(table, budget)
    choice = greedy_choice(problem)
    value, cost = problem.total(choice)
    for g in range(problem.n_groups):
        for k in np.flatnonzero(problem.allowed[g]):
            dv = problem.values[g, k] - problem.values[g, choice[g]]
            dc = problem.costs[g, k] - problem.costs[g, choice[g]]
            if dv < 0 and dc >= 0:
                assert cost + dc > problem.capacity


def test_greedy_is_fast_on_many_groups() -> None:
    table = random_table(0, n_units=4000, ties=(), mask_prob=0.0)
    sol = GreedySolver().solve(table, budget_between(table, 0.35))
    assert sol.meta["solve_time_s"] < 5.0 and sol.success


# ---------------------------------------------------------------------- uniform
def test_uniform_picks_largest_fitting_format() -> None:
    table = random_table(2, n_units=6, mask_prob=0.0, ties=(2,))
    space = table.space
    per_fmt = {
        f.key: 8 * sum(f.nbytes(u.shape) for u in space.units) / space.numel for f in space.formats
    }
    budget = Budget.avg_bits(per_fmt["int4-g64"] + 1e-6)
    sol = UniformSolver().solve(table, budget)
    assert set(sol.choice) == {"int4-g64"} and sol.status is Status.FEASIBLE
    assert "int4-g64" in sol.message
    sol = UniformSolver().solve(table, Budget.avg_bits(per_fmt["int4-g64"] - 1e-3))
    assert set(sol.choice) == {"int3-g64"}
    assert set(UniformSolver().solve(table, Budget.avg_bits(32)).choice) == {"bf16"}


def test_uniform_forced_format() -> None:
    table = random_table(2, n_units=6, mask_prob=0.0)
    sol = UniformSolver(format="INT8-G64").solve(table, Budget.avg_bits(16.0))
    assert set(sol.choice) == {"int8-g64"}
    sol = UniformSolver(format="int8-g64").solve(table, Budget.avg_bits(4.0))
    assert sol.status is Status.INFEASIBLE
    assert "int8-g64" in sol.message and "4 avg bits" in sol.message
    with pytest.raises(ValueError, match="`format`.*not in the search space"):
        UniformSolver(format="int5-g64").solve(table, Budget.avg_bits(4.0))
    with pytest.raises(ValueError, match="`format`"):
        UniformSolver(format="nonsense").solve(table, Budget.avg_bits(4.0))
    with pytest.raises(TypeError, match="format"):
        UniformSolver(format=4)  # type: ignore[arg-type]


def test_uniform_forced_format_not_allowed_everywhere() -> None:
    fmts = random_table(0).space.formats
    units = (Unit("a", (64, 64), ("int2-g64", "int4-g64")), Unit("b", (64, 64), ("int2-g64",)))
    table = SensitivityTable(
        space=SearchSpace(units=units, formats=fmts), values=np.ones((2, len(fmts))), estimator="t"
    )
    with pytest.raises(ValueError, match="`format` 'int4-g64' is not allowed for every unit"):
        UniformSolver(format="int4-g64").solve(table, Budget.avg_bits(8.0))
    assert set(UniformSolver().solve(table, Budget.avg_bits(8.0)).choice) == {"int2-g64"}


def test_uniform_without_common_format_is_infeasible() -> None:
    fmts = random_table(0).space.formats
    units = (Unit("a", (64, 64), ("int4-g64",)), Unit("b", (64, 64), ("int2-g64",)))
    table = SensitivityTable(
        space=SearchSpace(units=units, formats=fmts), values=np.ones((2, len(fmts))), estimator="t"
    )
    sol = UniformSolver().solve(table, Budget.avg_bits(8.0))
    assert sol.status is Status.INFEASIBLE and "no format is allowed for every unit" in sol.message


# ---------------------------------------------------------------------- brute force
def test_brute_force_matches_itertools() -> None:
    for seed in range(8):
        table = random_table(
            seed, n_units=5, formats=FORMATS4, mask_prob=0.3, ties=(2,), keep_first=False
        )
        budget = budget_between(table, 0.3, uniform_feasible=False)
        problem = Problem.build(table, budget)
        best = math.inf
        for combo in itertools.product(*[np.flatnonzero(r) for r in problem.allowed]):
            value, cost = problem.total(np.array(combo))
            if cost <= problem.capacity:
                best = min(best, value)
        sol = oracle(table, budget)
        assert sol.status is Status.OPTIMAL
        assert math.isclose(sol.objective, best, rel_tol=1e-12)


def test_brute_force_refuses_large_instances() -> None:
    table = random_table(0, n_units=9, formats=FORMATS4, mask_prob=0.0, ties=())
    with pytest.raises(ValueError, match=r"262,144 combinations.*`max_combinations`=1,000"):
        BruteForceSolver(max_combinations=1000).solve(table, budget_between(table, 0.5))
    with pytest.raises(ValueError, match="max_combinations"):
        BruteForceSolver(max_combinations=0)


def test_brute_force_chunks_agree() -> None:
    """More combinations than one chunk (4**9 = 262,144 > 65,536)."""
    table = random_table(1, n_units=9, formats=FORMATS4, mask_prob=0.0, ties=())
    budget = budget_between(table, 0.4)
    sol = oracle(table, budget)
    assert sol.meta["combinations"] == 4**9
    ilp = SOLVERS.get("ilp", mip_rel_gap=0.0).solve(table, budget)
    assert math.isclose(sol.objective, ilp.objective, rel_tol=1e-9)
