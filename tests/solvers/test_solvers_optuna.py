"""OptunaSolver: ILP warm start, black-box objective, feasibility, storages and resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from contracts.solver import FORMATS4, budget_between, random_constraint, random_table

import bitalloc as ba
from bitalloc.search.budget import Budget
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Solution, Status
from bitalloc.search.table import SensitivityTable
from bitalloc.solvers import SOLVERS
from bitalloc.solvers.optuna_search import OptunaSolver, _storage


def true_loss(
    table: SensitivityTable, budget: Budget, seed: int = 1
) -> tuple[list[float], object]:
    """A black-box objective that disagrees with the table: another random table's sum.
    Records the budget residual of every plan it is asked to score."""
    rng = np.random.default_rng(seed)
    other = table.values * rng.lognormal(0.0, 1.0, table.values.shape)
    col = {k: j for j, k in enumerate(table.space.keys)}
    seen: list[float] = []

    def evaluate(sol: Solution, *, tokens: int | None = None) -> float:
        seen.append(budget.residual(sol))
        return float(sum(other[i, col[k]] for i, k in enumerate(sol.choice)))

    return seen, evaluate


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_never_worse_than_the_enqueued_ilp_plan(sampler: str) -> None:
    for seed in range(4):
        table = random_table(30 + seed, n_units=9, ties=(3,))
        budget = budget_between(table, 0.3)
        ilp = ba.solve(table, budget, "ilp")
        sol = OptunaSolver(sampler=sampler, n_trials=30, population_size=8).solve(table, budget)
        assert sol.status is Status.FEASIBLE and budget.residual(sol) >= 0
        assert sol.objective <= ilp.objective * (1 + 1e-12)
        assert sol.meta["n_trials"] == 30 and sol.meta["storage"] == "memory"


def test_black_box_objective_is_used_and_every_scored_plan_fits() -> None:
    table = random_table(41, n_units=8, formats=FORMATS4, ties=(2,))
    budget = budget_between(table, 0.25)
    seen, evaluate = true_loss(table, budget)
    sol = ba.solve(table, budget, "optuna", evaluate=evaluate, n_trials=60)
    assert 0 < sol.meta["n_evaluations"] == len(seen) <= 60  # repeats are not re-measured
    assert min(seen) >= 0
    assert sol.meta["measured"] == pytest.approx(evaluate(sol))
    ilp = ba.solve(table, budget, "ilp")
    assert sol.meta["measured"] <= evaluate(ilp) + 1e-15  # ILP plan is trial 0
    assert sol.meta["best_trial"] >= 0 and budget.residual(sol) >= 0


def test_over_budget_samples_are_repaired_and_constraints_reported(tmp_path: Path) -> None:
    import optuna

    table = random_table(42, n_units=8, ties=(2,))
    budget = budget_between(table, 0.05)  # tight: most random samples are over budget
    journal = str(tmp_path / "tight.journal")
    sol = OptunaSolver(n_trials=25, warm_start=None, storage=journal, study_name="t").solve(
        table, budget
    )
    assert sol.success and budget.residual(sol) >= 0
    study = optuna.load_study(study_name="t", storage=_storage(journal))
    over = [t for t in study.trials if t.constraints["memory"] > 0]
    assert over, "a tight budget should see samples over budget"
    group = Problem.build(table, budget).unit_group
    for t in study.trials:  # every scored (repaired) plan fits
        plan = t.user_attrs["bitalloc_plan"]
        scored = Solution(
            space=table.space,
            choice=tuple(plan[g] for g in group),
            status=Status.FEASIBLE,
        )
        assert budget.residual(scored) >= 0
        assert t.value == pytest.approx(_objective(table, scored), rel=1e-12)


def _objective(table: SensitivityTable, sol: Solution) -> float:
    cols = [table.space.keys.index(k) for k in sol.choice]
    return float(sum(table.values[i, j] for i, j in enumerate(cols)))


def test_parameters_named_by_unit_and_tie_group_ilp_first(tmp_path: Path) -> None:
    import optuna

    table = random_table(43, n_units=6, ties=(2, 2))
    budget = budget_between(table, 0.5)
    journal = str(tmp_path / "names.journal")
    OptunaSolver(n_trials=3, storage=journal, study_name="n").solve(table, budget)
    first = optuna.load_study(study_name="n", storage=_storage(journal)).trials[0]
    assert set(first.params) == {"tie:t0", "tie:t1", "layer4.proj", "layer5.proj"}
    ilp = ba.solve(table, budget, "ilp")
    assert first.params == {
        "tie:t0": ilp.choice[0],
        "tie:t1": ilp.choice[2],
        "layer4.proj": ilp.choice[4],
        "layer5.proj": ilp.choice[5],
    }


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_storage_round_trip_resumes_the_same_study(tmp_path: Path, kind: str) -> None:
    table = random_table(44, n_units=8, ties=(2,))
    budget = budget_between(table, 0.3)
    storage = (
        str(tmp_path / "study.journal") if kind == "journal" else f"sqlite:///{tmp_path}/s.db"
    )
    opts = {"storage": storage, "study_name": "mp", "n_trials": 4, "load_if_exists": True}
    opts["warm_start"] = None  # random trials: the best over both runs is a real check
    first = OptunaSolver(**opts).solve(table, budget)
    assert first.meta["n_trials"] == 4 and first.meta["study_name"] == "mp"
    second = OptunaSolver(**opts, seed=1).solve(table, budget)
    assert second.meta["n_trials"] == 8 and second.meta["n_new_trials"] == 4
    assert second.objective <= first.objective  # the best over the whole study
    assert (tmp_path / ("study.journal" if kind == "journal" else "s.db")).stat().st_size > 0
    with pytest.raises(ValueError, match="different budget"):
        OptunaSolver(**opts).solve(table, budget_between(table, 0.6))
    fresh = {**opts, "load_if_exists": False}
    with pytest.raises(ValueError, match="already exists"):
        OptunaSolver(**fresh).solve(table, budget)


def test_extra_constraints_and_infeasible() -> None:
    table = random_table(45, n_units=7, formats=FORMATS4, ties=(2,))
    row = random_constraint(table, 1, "latency", 0.2)
    budget = budget_between(table, 0.6).with_constraints(row)
    sol = OptunaSolver(n_trials=20, warm_start="greedy").solve(table, budget)
    assert sol.success and all(v >= -1e-9 * abs(row.limit) for v in budget.residuals(sol).values())
    low = ba.solve(table, Budget.avg_bits(0.5), "optuna")
    assert low.status is Status.INFEASIBLE and "minimum achievable" in low.message


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="`sampler`"):
        OptunaSolver(sampler="cmaes")
    with pytest.raises(ValueError, match="`n_trials`"):
        OptunaSolver(n_trials=0)
    with pytest.raises(ValueError, match="black-box"):
        OptunaSolver(warm_start="optuna")
    with pytest.raises(ValueError, match="unknown solver"):
        OptunaSolver(warm_start="mip")
    with pytest.raises(ValueError, match="`timeout_s`"):
        OptunaSolver(timeout_s=0)
    assert SOLVERS.cls("optuna").black_box is True


def test_trial_params_use_the_study_plan_encoding(tmp_path: Path) -> None:
    """The solver names its parameters as studies do (``search.params``): a plan read back
    from a stored trial's params is the plan the trial measured."""
    import optuna

    from bitalloc.search.params import params_to_choice, plan_params

    table = random_table(5, n_units=7, ties=(3, 2))
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    sol = OptunaSolver(n_trials=6, storage=storage, study_name="enc").solve(
        table, budget_between(table, 0.5)
    )
    trials = optuna.load_study(study_name="enc", storage=storage).trials
    want = plan_params(table.space)
    assert trials and all(set(t.params) == set(want) for t in trials)
    assert any(params_to_choice(table.space, t.params) == sol.choice for t in trials)
