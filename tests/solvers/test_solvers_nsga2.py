"""Nsga2Solver: budget repair, Pareto fronts vs the exact optimum, black-box objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
from contracts.solver import FORMATS4, budget_between, random_constraint, random_table

import bitalloc as ba
from bitalloc.search.budget import Budget
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Solution, Status
from bitalloc.solvers._mckp import best_value_choice, repair_batch
from bitalloc.solvers.nsga2 import Nsga2Solver

FAST = {"pop_size": 16, "n_gen": 8}


def _random_choices(problem: Problem, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, problem.n_groups), dtype=np.int64)
    for g in range(problem.n_groups):
        out[:, g] = rng.choice(np.flatnonzero(problem.allowed[g]), size=n)
    return out


@pytest.mark.parametrize("extra", [False, True])
def test_repair_makes_every_candidate_fit(extra: bool) -> None:
    for seed in range(6):
        table = random_table(60 + seed, n_units=10, formats=FORMATS4, ties=(3, 2))
        budget = budget_between(table, 0.1 + 0.15 * seed)
        if extra:
            budget = budget.with_constraints(random_constraint(table, seed, "bops", 0.3))
        problem = Problem.build(table, budget)
        raw = _random_choices(problem, 64, seed)
        fixed, ok = repair_batch(problem, raw)
        assert ok.all()
        for before, after in zip(raw, fixed):
            assert problem.fits(after)
            if problem.fits(before):
                assert (before == after).all()  # feasible candidates are left alone
            elif not extra:  # memory only: only downgrades, never more bits
                costs = problem.costs[np.arange(problem.n_groups)]
                assert (
                    costs[np.arange(len(after)), after] <= costs[np.arange(len(before)), before]
                ).all()


def test_repair_lowers_the_least_damaging_group_first() -> None:
    table = random_table(70, n_units=6, formats=FORMATS4, ties=(), mask_prob=0.0)
    problem = Problem.build(table, Budget.avg_bits(32.0))
    top = np.full(problem.n_groups, 3)  # everything int8
    v, c = problem.values, problem.costs
    # over budget by the smallest int8 -> int4 step: any downgrade removes the overshoot
    over = min(c[g, 3] - c[g, 2] for g in range(problem.n_groups))
    tight = Problem.build(table, Budget.bytes((problem.total(top)[1] - over) / 8))
    fixed, ok = repair_batch(tight, top[None])
    # least loss increase per unit of overshoot removed: (v[g,k] - v[g,3]) / min(over, saved)
    moves = {
        (g, k): (v[g, k] - v[g, 3]) / min(over, c[g, 3] - c[g, k])
        for g in range(problem.n_groups)
        for k in range(3)
    }
    g, k = min(moves, key=moves.__getitem__)
    expected = top.copy()
    expected[g] = k
    assert ok[0] and (fixed[0] == expected).all() and tight.fits(expected)


def test_scored_candidates_never_exceed_the_budget() -> None:
    table = random_table(71, n_units=9, ties=(2,))
    budget = budget_between(table, 0.15)
    residuals: list[float] = []

    def evaluate(sol: Solution, *, tokens: int | None = None) -> float:
        residuals.append(budget.residual(sol))
        return sol.objective * (1.0 + 0.1 * sol.avg_bits)

    sol = Nsga2Solver(**FAST).solve(table, budget, evaluate=evaluate)
    assert len(residuals) == sol.meta["n_evaluations"] == sol.meta["n_plans"] > FAST["pop_size"]
    assert min(residuals) >= 0 and budget.residual(sol) >= 0
    assert sol.meta["measured"] == pytest.approx(sol.objective * (1.0 + 0.1 * sol.avg_bits))


def test_solve_is_at_least_as_good_as_greedy() -> None:
    for seed in range(4):
        table = random_table(80 + seed, n_units=10, ties=(3,))
        budget = budget_between(table, 0.3)
        sol = Nsga2Solver(**FAST).solve(table, budget)
        assert sol.objective <= ba.solve(table, budget, "greedy").objective * (1 + 1e-12)


def test_frontier_is_non_dominated_monotone_and_exactly_bounded() -> None:
    table = random_table(90, n_units=7, formats=FORMATS4, ties=(2,))
    front = Nsga2Solver(pop_size=24, n_gen=15).frontier(table)
    assert len(front) >= 3 and all(p.status is Status.FEASIBLE for p in front.points)
    assert all(p.message == "" and p.meta["solver"] == "nsga2" for p in front.points)
    sizes = [p.nbytes for p in front.points]
    losses = [p.objective for p in front.points]
    assert all(a < b for a, b in zip(sizes, sizes[1:]))
    assert all(a > b for a, b in zip(losses, losses[1:]))
    assert len(front.pareto()) == len(front)
    problem = Problem.build(table, Budget.avg_bits(32.0))
    assert 8 * sizes[0] == problem.min_cost()  # the smallest plan is on the front
    assert math.isclose(losses[-1], problem.total(best_value_choice(problem))[0], rel_tol=1e-12)
    for p in front.points:  # no point beats the exact optimum at its own size
        best = ba.solve(table, Budget.bytes(p.nbytes), "brute_force")
        assert p.objective >= best.objective * (1 - 1e-12)


def test_frontier_with_a_cap_evaluate_and_seed() -> None:
    table = random_table(91, n_units=8, ties=(2,))
    budget = budget_between(table, 0.4)
    front = Nsga2Solver(**FAST).frontier(table, budget, evaluate=lambda s: s.objective + 1.0)
    assert all(budget.residual(p) >= 0 for p in front.points)
    assert all(
        m["measured"] == pytest.approx(p.objective + 1.0)
        for p, m in zip(front.points, front.measured)
    )
    again = Nsga2Solver(**FAST).frontier(table, budget, evaluate=lambda s: s.objective + 1.0)
    assert [p.choice for p in again.points] == [p.choice for p in front.points]
    low = Nsga2Solver(**FAST).frontier(table, Budget.avg_bits(0.5))
    assert len(low) == 1 and low.points[0].status is Status.INFEASIBLE


def test_options_are_checked() -> None:
    for bad in (
        {"pop_size": 1},
        {"n_gen": 0},
        {"warm_start": -1},
        {"crossover_prob": 2.0},
        {"mutation_eta": 0},
        {"seed": 1.5},
    ):
        with pytest.raises(ValueError, match=f"`{next(iter(bad))}`"):
            Nsga2Solver(**bad)
