"""IlpSolver: exact against brute force on both backends, status mapping, hygiene."""

from __future__ import annotations

import importlib.util
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from contracts.solver import (
    FORMATS4,
    FORMATS5,
    budget_between,
    oracle,
    random_constraint,
    random_table,
    row_slack_ok,
)

from bitalloc.search.budget import Budget, LinearConstraint
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Status
from bitalloc.solvers import SOLVERS, IlpSolver
from bitalloc.solvers import ilp as ilp_module
from bitalloc.solvers._mip import MipResult

HAS_HIGHS = importlib.util.find_spec("highspy") is not None
BACKENDS = [
    "cbc",
    "scipy",
    pytest.param("highs", marks=pytest.mark.skipif(not HAS_HIGHS, reason="highspy missing")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_brute_force(backend: str) -> None:
    for seed in range(30):
        n_units = 6 + seed % 3
        table = random_table(
            seed,
            n_units=n_units,
            formats=FORMATS4,
            mask_prob=0.2,
            ties=((2,), (), (3,), (2, 2))[seed % 4],
            keep_first=seed % 5 != 0,
        )
        budget = budget_between(table, 0.05 + 0.03 * seed, uniform_feasible=False)
        best = oracle(table, budget)
        sol = IlpSolver(backend=backend).solve(table, budget)
        assert sol.status is Status.OPTIMAL, sol.message
        assert math.isclose(sol.objective, best.objective, rel_tol=1e-9), (
            seed,
            sol.choice,
            best.choice,
        )
        assert budget.residual(sol) >= 0
        assert sol.meta["mip_backend"] == backend
        assert sol.meta["lp_bound"] <= best.objective * (1 + 1e-12)
        assert 0.0 <= sol.meta["mip_gap"] <= 1e-4


def test_meta_and_not_binding() -> None:
    table = random_table(1, ties=(2, 2))
    sol = IlpSolver().solve(table, Budget.avg_bits(32.0))
    assert sol.status is Status.OPTIMAL and "not binding" in sol.message
    assert sol.meta["mip_backend"] is None
    assert sol.choice == oracle(table, Budget.avg_bits(32.0)).choice
    sol = IlpSolver().solve(table, budget_between(table, 0.5))
    n_bin = int(Problem.build(table, Budget.avg_bits(32.0)).allowed.sum())
    assert sol.meta["n_binaries"] == n_bin
    assert sol.meta["solver"] == "ilp" and sol.meta["solver_options"]["backend"] == "auto"
    assert sol.meta["solver_status"] == "optimal"


@pytest.mark.parametrize("backend", BACKENDS)
def test_prints_nothing_and_leaves_no_files(
    backend: str,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HiGHS prints a banner from C++ even with msg=False; CBC writes .mps/.sol files."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    table = random_table(4)
    sol = IlpSolver(backend=backend).solve(table, budget_between(table, 0.3))
    assert sol.status is Status.OPTIMAL
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert list(tmp_path.iterdir()) == []


def test_auto_backend_switches_to_scipy_for_large_problems(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = random_table(2)
    budget = budget_between(table, 0.4)
    assert IlpSolver().solve(table, budget).meta["mip_backend"] == "cbc"
    monkeypatch.setattr(ilp_module, "AUTO_HIGHS_ABOVE", 0)
    assert IlpSolver().solve(table, budget).meta["mip_backend"] == "scipy"


def test_highs_requested_without_highspy(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        ilp_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "highspy" else real(name, *a),
    )
    table = random_table(2)
    with pytest.raises(ValueError, match="backend.*highspy"):
        IlpSolver(backend="highs").solve(table, budget_between(table, 0.4))
    assert IlpSolver().solve(table, budget_between(table, 0.4)).meta["mip_backend"] == "cbc"


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"backend": "gurobi"}, "backend"),
        ({"time_limit_s": 0}, "time_limit_s"),
        ({"mip_rel_gap": 1.5}, "mip_rel_gap"),
        ({"mip_rel_gap": -1e-3}, "mip_rel_gap"),
    ],
)
def test_bad_options(opts: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IlpSolver(**opts)  # type: ignore[arg-type]


def test_unknown_option_via_registry() -> None:
    with pytest.raises(ValueError, match="time_limit"):
        SOLVERS.get("ilp", timelimit=3)


def _patch_mip(monkeypatch: pytest.MonkeyPatch, result: object) -> None:
    def fake(*_args: object) -> object:
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(ilp_module, "_solve_mip", fake)


def test_time_limit_with_incumbent_is_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    table = random_table(5)
    budget = budget_between(table, 0.4)
    problem = Problem.build(table, budget)
    _patch_mip(monkeypatch, MipResult(problem.cheapest(), Status.LIMIT, None))
    sol = IlpSolver(time_limit_s=7).solve(table, budget)
    assert sol.status is Status.LIMIT
    assert "time limit 7s" in sol.message and "gap" in sol.message
    assert sol.meta["mip_gap"] > 0


def test_no_incumbent_falls_back_to_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    table = random_table(5)
    budget = budget_between(table, 0.4)
    _patch_mip(monkeypatch, MipResult(None, None, None, text="Not Solved"))
    sol = IlpSolver().solve(table, budget)
    assert sol.status is Status.FEASIBLE and "greedy" in sol.message
    assert sol.choice == SOLVERS.get("greedy").solve(table, budget).choice


def test_solver_crash_falls_back_to_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    import pulp

    table = random_table(5)
    _patch_mip(monkeypatch, pulp.PulpSolverError("cbc exploded"))
    sol = IlpSolver().solve(table, budget_between(table, 0.4))
    assert sol.status is Status.FEASIBLE and "cbc exploded" in sol.message


def test_overshooting_plan_is_repaired(monkeypatch: pytest.MonkeyPatch) -> None:
    table = random_table(6, n_units=8)
    budget = budget_between(table, 0.3)
    problem = Problem.build(table, budget)
    most = np.argmax(np.where(problem.allowed, problem.costs, -np.inf), axis=1)
    _patch_mip(monkeypatch, MipResult(most, Status.OPTIMAL, None))
    sol = IlpSolver().solve(table, budget)
    assert sol.status is Status.FEASIBLE and "repaired" in sol.message
    assert budget.residual(sol) >= 0


def test_real_time_limit_returns_a_plan() -> None:
    """A 3,000-group instance with a tiny time limit still yields a plan within budget."""
    table = random_table(0, n_units=3000, formats=FORMATS5, ties=(), mask_prob=0.0)
    budget = budget_between(table, 0.35)
    sol = IlpSolver(
        backend="highs" if HAS_HIGHS else "cbc", time_limit_s=0.05, mip_rel_gap=0.0
    ).solve(table, budget)
    assert sol.status in (Status.OPTIMAL, Status.LIMIT, Status.FEASIBLE)
    assert budget.residual(sol) >= 0
    assert sol.objective >= sol.meta["lp_bound"] * (1 - 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extra_rows_match_brute_force(backend: str) -> None:
    for seed in range(10):
        table = random_table(300 + seed, n_units=7, formats=FORMATS4, ties=((2,), ())[seed % 2])
        rows = [random_constraint(table, seed, k, 0.1 + 0.08 * seed) for k in ("bops", "latency")]
        budget = budget_between(table, 0.3 + 0.07 * seed).with_constraints(*rows)
        best = oracle(table, budget)
        sol = IlpSolver(backend=backend).solve(table, budget)
        assert sol.status is Status.OPTIMAL, sol.message
        assert math.isclose(sol.objective, best.objective, rel_tol=1e-9), seed
        assert row_slack_ok(budget, sol)
        assert sol.meta["lp_bound"] <= best.objective * (1 + 1e-9)


def test_jointly_infeasible_rows() -> None:
    """Memory forces the narrowest formats, latency forbids them: each row alone is fine."""
    table = random_table(3, n_units=6, formats=FORMATS4, mask_prob=0.0, ties=())
    slow = LinearConstraint.latency(dict(zip(FORMATS4, (3.0, 2.0, 1.0, 1.0))), 1.0)
    base = Problem.build(table, Budget.avg_bits(32.0, [slow]))
    limit = 0.9 * float(base.extra_totals(base.cheapest())[0])
    assert limit > base.extra_min()[0]
    latency = LinearConstraint.from_dict({**slow.to_dict(), "limit": limit})
    budget = Budget.bytes(base.min_cost() / 8, [latency])
    solvers = [("ilp", {"backend": "cbc"}), ("ilp", {"backend": "scipy"}), ("brute_force", {})]
    for name, opts in solvers:
        sol = SOLVERS.get(name, **opts).solve(table, budget)
        assert sol.status is Status.INFEASIBLE and "jointly" in sol.message, (name, sol.message)
        assert "['latency']" in sol.message
    sol = SOLVERS.get("greedy").solve(table, budget)
    assert sol.status is Status.INFEASIBLE and "'ilp'" in sol.message


def test_scipy_time_limit_with_extra_row() -> None:
    table = random_table(0, n_units=3000, formats=FORMATS5, ties=(), mask_prob=0.0)
    budget = budget_between(table, 0.35).with_constraints(
        random_constraint(table, 0, "latency", 0.3)
    )
    sol = IlpSolver(backend="scipy", time_limit_s=0.05, mip_rel_gap=0.0).solve(table, budget)
    assert sol.status in (Status.OPTIMAL, Status.LIMIT, Status.FEASIBLE)
    assert row_slack_ok(budget, sol)
    assert sol.objective >= sol.meta["lp_bound"] * (1 - 1e-12)
    if sol.status is Status.LIMIT:
        assert "time limit 0.05s" in sol.message and "gap" in sol.message


def test_large_problems_take_the_lp_rounding_when_within_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = random_table(9, n_units=300, formats=FORMATS5, ties=(), mask_prob=0.0)
    budget = budget_between(table, 0.4)
    exact = IlpSolver(backend="scipy", mip_rel_gap=0.0).solve(table, budget)
    monkeypatch.setattr(ilp_module, "AUTO_HIGHS_ABOVE", 0)
    sol = IlpSolver(mip_rel_gap=1e-2).solve(table, budget)
    assert sol.status is Status.OPTIMAL and sol.meta["mip_backend"] is None
    assert "lagrangian plan within mip_rel_gap" in sol.meta["solver_status"]
    assert sol.objective <= exact.objective * (1 + 1e-2) and sol.meta["mip_gap"] <= 1e-2
    forced = IlpSolver(mip_rel_gap=0.0).solve(table, budget)  # gap 0: the MIP runs
    assert forced.meta["mip_backend"] == "scipy"
    assert math.isclose(forced.objective, exact.objective, rel_tol=1e-9)
