"""LagrangianSolver: hulls on hand examples, LP bound, agreement of both methods, ILP gap."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from contracts.solver import FORMATS5, budget_between, random_table

from bitalloc.search.budget import Budget, LinearConstraint
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Status
from bitalloc.solvers import SOLVERS, LagrangianSolver
from bitalloc.solvers._hull import lower_hulls, prefix
from bitalloc.solvers._mckp import lp_bound
from bitalloc.solvers.lagrangian import fill_moves, solve_problem

INF = math.inf


def hull_of(costs: list[float], values: list[float]) -> list[int]:
    return lower_hulls(np.array([costs], float), np.array([values], float)).options(0)


def reference_hull(c: np.ndarray, v: np.ndarray) -> list[tuple[float, float]]:
    """Plain monotone chain for one group (as in ``_mckp.lp_bound``)."""
    hull: list[tuple[float, float]] = []
    for j in sorted(np.flatnonzero(np.isfinite(c)), key=lambda j: (c[j], v[j])):
        p = (float(c[j]), float(v[j]))
        if hull and p[1] >= hull[-1][1]:
            continue
        while len(hull) >= 2 and (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-1][0]) >= (
            p[1] - hull[-1][1]
        ) * (hull[-1][0] - hull[-2][0]):
            hull.pop()
        hull.append(p)
    return hull


def test_hull_hand_examples() -> None:
    # option 1 is dominated (dearer and worse than 0); 3 lies above the chord 2-4.
    assert hull_of([2, 3, 4, 6, 8], [10, 11, 4, 2.5, 0]) == [0, 2, 4]
    # unsorted costs, a collinear middle point (dropped), a not-allowed option.
    assert hull_of([8, 2, INF, 5], [0, 6, 1, 3]) == [1, 0]
    # equal costs keep the better value; a worse dearer option is dropped.
    assert hull_of([4, 4, 2, 6], [3, 1, 5, 2]) == [2, 1]
    assert hull_of([3, INF], [1, INF]) == [0]
    # several groups at once, each with its own hull
    c = np.array([[2, 3, 4, 6, 8], [1, 2, 3, 4, 5]], float)
    v = np.array([[10, 11, 4, 2.5, 0], [10, 6, 3, 1, 0]], float)
    h = lower_hulls(c, v)
    assert h.options(0) == [0, 2, 4] and h.options(1) == [0, 1, 2, 3, 4]
    assert h.cs[0, h.keep[0]].tolist() == [2, 4, 8] and h.vs[0, h.keep[0]].tolist() == [10, 4, 0]


def test_hull_is_convex_and_undominated_on_random_groups() -> None:
    rng = np.random.default_rng(0)
    c = rng.integers(1, 20, size=(2000, 6)).astype(float)
    v = rng.random((2000, 6))
    c[rng.random(c.shape) < 0.2] = INF
    c[:, 0] = np.where(np.isfinite(c).any(axis=1), c[:, 0], 5.0)
    v = np.where(np.isfinite(c), v, INF)
    h = lower_hulls(c, v)
    for g in range(0, 2000, 7):
        k = int(h.keep[g].sum())
        hc, hv = h.cs[g, h.keep[g]], h.vs[g, h.keep[g]]
        assert np.array_equal(c[g, h.options(g)], hc)
        assert hc.tolist() == [p[0] for p in reference_hull(c[g], v[g])]
        assert (np.diff(hc) > 0).all() and (np.diff(hv) < 0).all()
        slopes = np.diff(hv) / np.diff(hc)
        assert (np.diff(slopes) > 0).all()  # strictly convex
        ok = np.isfinite(c[g])
        assert hc[0] == c[g, ok].min() and hv[k - 1] == v[g, ok].min()
        for j in np.flatnonzero(ok):  # every option lies on or above the hull
            pos = np.searchsorted(hc, c[g, j], side="right") - 1
            if pos >= 0 and pos < k - 1:
                t = (c[g, j] - hc[pos]) / (hc[pos + 1] - hc[pos])
                assert v[g, j] >= hv[pos] + t * (hv[pos + 1] - hv[pos]) - 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_within_reported_gap_of_the_ilp_optimum(seed: int) -> None:
    table = random_table(seed, n_units=300, formats=FORMATS5, mask_prob=0.1, ties=(3, 2))
    budget = budget_between(table, (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)[seed])
    opt = SOLVERS.get("ilp", mip_rel_gap=0.0, backend="scipy").solve(table, budget)
    assert opt.status is Status.OPTIMAL
    for method in ("hull", "bisection"):
        sol = LagrangianSolver(method=method).solve(table, budget)
        lp, gap = sol.meta["lp_bound"], sol.meta["gap"]
        assert budget.residual(sol) >= 0
        assert lp <= opt.objective * (1 + 1e-9) and opt.objective <= sol.objective * (1 + 1e-12)
        assert math.isclose(gap, (sol.objective - lp) / sol.objective, rel_tol=1e-9, abs_tol=0)
        assert sol.objective - opt.objective <= gap * sol.objective + 1e-12
        assert gap < 1e-2 and sol.status in (Status.FEASIBLE, Status.OPTIMAL)


def test_lp_bound_matches_the_reference_hull_routine() -> None:
    for seed in range(8):
        table = random_table(seed, n_units=60, mask_prob=0.25, ties=(2, 2))
        problem = Problem.build(table, budget_between(table, 0.1 + 0.1 * seed))
        ref = lp_bound(problem)
        for method in ("hull", "bisection"):
            res = solve_problem(problem, method, fill=False)
            assert math.isclose(res.lp_bound, min(ref, res.objective), rel_tol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_both_methods_agree(seed: int) -> None:
    table = random_table(seed, n_units=400, mask_prob=0.15, ties=())
    problem = Problem.build(table, budget_between(table, 0.2 + 0.15 * seed))
    for fill in (False, True):
        a = solve_problem(problem, "hull", fill)
        b = solve_problem(problem, "bisection", fill)
        assert np.array_equal(a.choice, b.choice)
        assert math.isclose(a.lp_bound, b.lp_bound, rel_tol=1e-9)
    assert b.info["iterations"] > 0 and b.info["lambda"] > 0


@pytest.mark.parametrize("share", [0.0, 1e-4, 0.3, 0.5, 0.999, 1.0, 1.5])
def test_prefix_band_equals_full_sort(share: float) -> None:
    rng = np.random.default_rng(int(share * 1000))
    n = 300_000
    key = -rng.lognormal(0.0, 2.0, n)
    dc = rng.integers(1, 50, n).astype(float)
    room = share * float(dc.sum())
    full = prefix(key, dc, room, sample=n)
    for sample in (20_000, 500):  # 500: a coarse estimate, possibly the fallback
        band = prefix(key, dc, room, sample=sample)
        assert np.array_equal(band[0], full[0]) and band[1:] == full[1:]
    order = np.argsort(key, kind="stable")
    k = int(np.searchsorted(np.cumsum(dc[order]), room, side="right"))
    assert full[0].sum() == k and (full[1] is None) == (k == n)


def test_fill_leaves_no_fitting_improvement() -> None:
    table = random_table(7, n_units=200, mask_prob=0.1, ties=())
    problem = Problem.build(table, budget_between(table, 0.45))
    res = solve_problem(problem, "hull", fill=True)
    value, cost = problem.total(res.choice)
    room = problem.capacity - cost
    a = problem.allowed
    d = np.where(a, problem.costs, INF) - problem.costs[np.arange(len(a)), res.choice][:, None]
    gain = problem.values[np.arange(len(a)), res.choice][:, None] - problem.values
    assert not (a & (gain > 0) & (d <= room)).any()
    assert (
        res.info["fill_moves"] >= 0
        and res.objective <= solve_problem(problem, "hull", fill=False).objective
    )


def test_fill_moves_hand_example() -> None:
    c = np.array([[0.0, 2.0, 3.0], [0.0, 1.0, 5.0]])
    v = np.array([[5.0, 3.0, 2.5], [4.0, 3.5, 0.0]])
    # pass 1: group 0 takes 0->1 (rho 1; its 0->2 has rho 0.83), group 1 takes 0->1 (rho 0.5)
    choice, n = fill_moves(c, v, np.array([0, 0]), room=3.0)
    assert choice.tolist() == [1, 1] and n == 2
    # with one more bit a second pass moves group 0 on to option 2 (dc 1, rho 0.5)
    choice, n = fill_moves(c, v, np.array([0, 0]), room=4.0)
    assert choice.tolist() == [2, 1] and n == 3


def test_not_binding_is_optimal() -> None:
    table = random_table(1, n_units=30)
    sol = LagrangianSolver().solve(table, Budget.avg_bits(32.0))
    assert sol.status is Status.OPTIMAL and sol.meta["gap"] == 0.0
    assert "not binding" in sol.message


def test_rejects_extra_constraints_and_bad_options() -> None:
    table = random_table(2)
    budget = budget_between(table, 0.5).with_constraints(LinearConstraint.bops(1e12))
    with pytest.raises(ValueError, match="'ilp'"):
        LagrangianSolver().solve(table, budget)
    with pytest.raises(ValueError, match="method"):
        LagrangianSolver(method="simplex")
    with pytest.raises(TypeError, match="fill"):
        LagrangianSolver(fill=1)  # type: ignore[arg-type]


def test_fast_on_many_groups() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    bits = np.array([2, 3, 4, 5, 6, 8], float)
    numel = rng.integers(1, 9, n)[:, None] * 4096.0
    costs = numel * (bits + 0.25)[None, :]
    values = rng.lognormal(0, 1.5, (n, 1)) * 4.0**-bits * rng.lognormal(0, 0.3, (n, 6))
    cap = 0.4 * costs[:, 0].sum() + 0.6 * costs[:, 3].sum()
    problem = Problem(
        values, costs, tuple((i,) for i in range(n)), cap, n, unit_group=np.arange(n)
    )
    t0 = time.perf_counter()
    res = solve_problem(problem, "hull")
    assert time.perf_counter() - t0 < 10.0
    assert res.cost <= cap and res.gap < 1e-4
