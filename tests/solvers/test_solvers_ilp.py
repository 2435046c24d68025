"""IlpSolver: exact against brute force on both backends, status mapping, hygiene."""

from __future__ import annotations

import importlib.util
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from contracts.solver import FORMATS4, FORMATS5, budget_between, oracle, random_table

from bitalloc.search.budget import Budget
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Status
from bitalloc.solvers import SOLVERS, IlpSolver
from bitalloc.solvers import ilp as ilp_module

HAS_HIGHS = importlib.util.find_spec("highspy") is not None
BACKENDS = [
    "cbc",
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
        assert sol.meta["backend"] == backend
        assert sol.meta["lp_bound"] <= best.objective * (1 + 1e-12)
        assert 0.0 <= sol.meta["mip_gap"] <= 1e-4


def test_meta_and_not_binding() -> None:
    table = random_table(1, ties=(2, 2))
    sol = IlpSolver().solve(table, Budget.avg_bits(32.0))
    assert sol.status is Status.OPTIMAL and "not binding" in sol.message
    assert sol.meta["backend"] is None
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


def test_auto_backend_switches_to_highs_for_large_problems(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = random_table(2)
    budget = budget_between(table, 0.4)
    assert IlpSolver().solve(table, budget).meta["backend"] == "cbc"
    if HAS_HIGHS:
        monkeypatch.setattr(ilp_module, "AUTO_HIGHS_ABOVE", 0)
        assert IlpSolver().solve(table, budget).meta["backend"] == "highs"


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
    assert IlpSolver().solve(table, budget_between(table, 0.4)).meta["backend"] == "cbc"


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
    _patch_mip(monkeypatch, ilp_module._MipResult(problem.cheapest(), "limit", None))
    sol = IlpSolver(time_limit_s=7).solve(table, budget)
    assert sol.status is Status.LIMIT
    assert "time limit 7s" in sol.message and "gap" in sol.message
    assert sol.meta["mip_gap"] > 0


def test_no_incumbent_falls_back_to_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    table = random_table(5)
    budget = budget_between(table, 0.4)
    _patch_mip(monkeypatch, ilp_module._MipResult(None, "Not Solved", None))
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
    _patch_mip(monkeypatch, ilp_module._MipResult(most, "optimal", None))
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
