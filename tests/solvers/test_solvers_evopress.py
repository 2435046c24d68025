"""EvoPress specifics: budget never left, resumable checkpoints, seeds, options, model fitness."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from contracts.solver import (
    FORMATS4,
    SolverContract,
    budget_between,
    random_constraint,
    random_table,
)

import bitalloc as ba
from bitalloc.search.budget import Budget
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Solution, Status
from bitalloc.search.table import SensitivityTable
from bitalloc.solvers import SOLVERS, EvoPressSolver
from bitalloc.solvers._evo import Ladders, mutate
from bitalloc.solvers._mckp import greedy_choice

FAST = {"generations": 12, "offspring": 8, "selection": ((3, 64), (1, 128))}


def interacting(table: SensitivityTable) -> Any:
    """A deterministic non-additive fitness: the table's loss plus a pairwise penalty on
    neighbouring units that take the same format (so the ILP start is not optimal)."""
    cols = {k: j for j, k in enumerate(table.space.keys)}

    def evaluate(sol: Solution, *, tokens: int | None = None) -> float:
        idx = [cols[k] for k in sol.choice]
        same = sum(a == b for a, b in zip(idx, idx[1:]))
        return sol.objective * (1.0 + 0.3 * same)

    return evaluate


class TestEvolvingContract(SolverContract):
    """The solver contract with evolution actually running (the default ILP start is optimal
    for the table fitness, so the shared contract run returns it unchanged)."""

    @pytest.fixture
    def solver_name(self) -> str:
        return "evopress"

    def options(self, name: str) -> dict[str, Any]:
        return {"start": "uniform", "generations": 8, "offspring": 8}


def test_ilp_start_with_table_fitness_is_returned_unevolved() -> None:
    table = random_table(2)
    budget = budget_between(table, 0.4)
    sol = EvoPressSolver().solve(table, budget)
    assert sol.meta["generations_run"] == 0 and sol.meta["history"] == []
    assert sol.choice == ba.solve(table, budget, "ilp").choice


def test_registered_black_box() -> None:
    cls = SOLVERS.cls("evopress")
    assert cls is EvoPressSolver and cls.black_box and not cls.exact
    assert "evopress" in ba.available("solver")


def checking(budget: Budget, seen: list[int | None]) -> Any:
    """A fitness that asserts every candidate meets every budget row and logs its tokens."""

    def evaluate(sol: Solution, *, tokens: int | None = None) -> float:
        res = budget.residuals(sol)
        assert res.pop("memory") >= 0, "candidate over the memory budget"
        limit = max(abs(c.limit) for c in budget.constraints)
        assert all(v >= -1e-9 * max(1.0, limit) for v in res.values()), res
        seen.append(tokens)
        return sol.objective

    return evaluate


def test_every_candidate_stays_within_every_budget_row() -> None:
    for seed in range(4):
        table = random_table(300 + seed, n_units=10, formats=FORMATS4, ties=(2,))
        row = random_constraint(table, seed, ("bops", "latency")[seed % 2], 0.5)
        budget = budget_between(table, 0.4).with_constraints(row)
        seen: list[int | None] = []
        evaluate = checking(budget, seen)
        solver = EvoPressSolver(start="uniform", seed=seed, **FAST)
        sol = solver.solve(table, budget, evaluate=evaluate)
        assert sol.status is Status.FEASIBLE and budget.residual(sol) >= 0
        assert sol.meta["evaluations"] == len(seen) > FAST["generations"]
        assert set(seen) == {64, 128}  # the selection steps' token counts


def test_mutation_raises_and_lowers_and_keeps_memory() -> None:
    table = random_table(7, n_units=12, formats=FORMATS4, ties=())
    problem = Problem.build(table, budget_between(table, 0.5))
    ladders = Ladders.build(problem)
    rng = np.random.default_rng(0)
    rows = np.arange(problem.n_groups)
    for parent in (problem.cheapest(), greedy_choice(problem)):
        kids = [mutate(problem, ladders, parent, rng, 3) for _ in range(300)]
        kids = [k for k in kids if k is not None]
        assert len(kids) > 100
        lowered = 0
        for kid in kids:
            assert problem.fits(kid)
            moved = ladders.pos[rows, kid] - ladders.pos[rows, parent]
            assert set(np.unique(moved)) <= {-1, 0, 1} and (moved == 1).sum() in (1, 2, 3)
            assert (moved == -1).sum() <= (moved == 1).sum()
            lowered += int((moved == -1).any())
        assert lowered > 0 or parent is not None and (ladders.pos[rows, parent] == 0).all()


def test_improves_a_non_additive_fitness_and_history_is_elitist() -> None:
    table = random_table(21, n_units=14, formats=FORMATS4, ties=())
    budget = budget_between(table, 0.5)
    fit = interacting(table)
    sol = EvoPressSolver(generations=40, offspring=8, selection=((1, None),)).solve(
        table, budget, evaluate=fit
    )
    hist = sol.meta["history"]
    assert sol.meta["fitness"] < sol.meta["start_fitness"]
    assert all(b <= a for a, b in zip(hist, hist[1:]))
    assert math.isclose(fit(sol), sol.meta["fitness"], rel_tol=1e-12)
    assert sol.meta["fitness_source"] == "evaluate" and sol.meta["start"] == "ilp"
    json.dumps(sol.meta)  # JSON-safe provenance


def test_time_limit_returns_the_best_plan_so_far_with_status_limit() -> None:
    table = random_table(21, n_units=14, formats=FORMATS4, ties=())
    budget = budget_between(table, 0.5)
    fit = interacting(table)
    zero = EvoPressSolver(generations=40, offspring=8, time_limit=0).solve(
        table, budget, evaluate=fit
    )
    assert zero.status is Status.LIMIT and zero.success and "time limit 0 s" in zero.message
    assert zero.meta["generations_run"] == 0 and zero.meta["fitness"] == zero.meta["start_fitness"]
    assert budget.residual(zero) >= 0
    full = EvoPressSolver(generations=3, offspring=8, time_limit=3600).solve(
        table, budget, evaluate=fit
    )
    assert full.status is Status.FEASIBLE and full.meta["generations_run"] == 3
    assert len(full.meta["seconds_per_generation"]) == 3


def test_table_fitness_from_uniform_start_improves_objective() -> None:
    table = random_table(5, n_units=16, formats=FORMATS4, ties=(3,), mask_prob=0.0)
    budget = budget_between(table, 0.3)
    sol = EvoPressSolver(start="uniform", generations=40).solve(table, budget)
    assert sol.meta["fitness_source"] == "table" and sol.meta["evaluations"] == 0
    assert sol.objective == sol.meta["fitness"] < sol.meta["start_objective"]


def test_same_seed_same_result_other_seed_other_path() -> None:
    table = random_table(8, n_units=14, formats=FORMATS4, ties=())
    budget = budget_between(table, 0.5)
    fit = interacting(table)
    runs = [
        EvoPressSolver(seed=s, start="uniform", **FAST).solve(table, budget, evaluate=fit)
        for s in (1, 1, 2, 3)
    ]
    assert runs[0].choice == runs[1].choice and runs[0].meta["history"] == runs[1].meta["history"]
    assert any(r.meta["history"] != runs[0].meta["history"] for r in runs[2:])


class Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path: Path) -> None:
    table = random_table(9, n_units=14, formats=FORMATS4, ties=(2,))
    budget = budget_between(table, 0.45)
    fit = interacting(table)
    opts = {"generations": 15, "offspring": 6, "start": "uniform", "seed": 4}
    whole = EvoPressSolver(**opts, checkpoint=tmp_path / "a.json").solve(table, budget, fit)

    def stop_at_6(done: int, total: int, desc: str) -> None:
        if done == 6:
            raise Interrupt

    path = tmp_path / "b.json"
    with pytest.raises(Interrupt):
        EvoPressSolver(**opts, checkpoint=path, callback=stop_at_6).solve(table, budget, fit)
    assert json.loads(path.read_text())["generation"] == 6
    resumed = EvoPressSolver(**opts, checkpoint=path).solve(table, budget, fit)
    assert resumed.meta["resumed_at"] == 6 and whole.meta["resumed_at"] is None
    for key in ("history", "fitness", "start_fitness", "evaluations"):
        assert resumed.meta[key] == whole.meta[key], key
    assert resumed.choice == whole.choice

    # a finished run can be extended: 5 generations, then 15 from its checkpoint
    short = tmp_path / "c.json"
    EvoPressSolver(**{**opts, "generations": 5}, checkpoint=short).solve(table, budget, fit)
    extended = EvoPressSolver(**opts, checkpoint=short).solve(table, budget, fit)
    assert extended.choice == whole.choice and extended.meta["history"] == whole.meta["history"]


def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    table = random_table(10)
    path = tmp_path / "run.json"
    solver = EvoPressSolver(generations=2, start="uniform", checkpoint=path)
    solver.solve(table, budget_between(table, 0.3))
    with pytest.raises(ValueError, match="checkpoint"):
        solver.solve(table, budget_between(table, 0.6))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="checkpoint"):
        solver.solve(table, budget_between(table, 0.3))


def _over_budget_parent(table, budget) -> list[int]:  # noqa: ANN001
    from bitalloc.search.problem import Problem

    problem = Problem.build(table, budget)
    costs = np.where(problem.allowed, problem.costs, -np.inf)
    return [int(j) for j in costs.argmax(axis=1)]  # the most expensive plan


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s, p: [1, 2], "not an object"),
        (lambda s, p: {k: v for k, v in s.items() if k != "parent"}, "lacks parent"),
        (lambda s, p: {**s, "parent": s["parent"][:-1]}, "list of"),
        (lambda s, p: {**s, "parent": [99] * len(s["parent"])}, "outside"),
        (lambda s, p: {**s, "parent": [-1] * len(s["parent"])}, "outside"),
        (lambda s, p: {**s, "parent": ["a"] * len(s["parent"])}, "list of"),
        (lambda s, p: {**s, "parent": p}, "over the budget"),
        (lambda s, p: {**s, "rng": {"bit_generator": "nope"}}, "rng"),
        (lambda s, p: {**s, "generation": -3}, ">= 0"),
    ],
)
def test_malformed_checkpoint_bodies_are_refused_on_load(tmp_path: Path, edit, message) -> None:  # noqa: ANN001
    """Issue 11 D8: the right ``run`` key with a broken body is a ValueError before any
    generation runs, never an AttributeError/KeyError/IndexError or a late RuntimeError."""
    table = random_table(10)
    budget = budget_between(table, 0.3)
    path = tmp_path / "run.json"
    calls: list[int] = []

    def fit(plan, tokens=None) -> float:  # noqa: ANN001
        calls.append(1)
        return float(plan.objective)

    solver = EvoPressSolver(generations=2, start="uniform", checkpoint=path)
    solver.solve(table, budget, fit)
    state = json.loads(path.read_text())
    path.write_text(json.dumps(edit(state, _over_budget_parent(table, budget))))
    calls.clear()
    with pytest.raises(ValueError, match=message):
        EvoPressSolver(generations=4, start="uniform", checkpoint=path).solve(table, budget, fit)
    assert not calls


def test_uniform_start_falls_back_to_cheapest_plan() -> None:
    table = random_table(0, n_units=8, formats=FORMATS4, ties=(), keep_first=False, mask_prob=0.5)
    budget = budget_between(table, 0.5, uniform_feasible=False)
    assert ba.solve(table, budget, "uniform").status is Status.INFEASIBLE  # no common format
    sol = EvoPressSolver(start="uniform", generations=3).solve(table, budget)
    p = Problem.build(table, budget)
    assert sol.success and sol.meta["start_objective"] == p.total(p.cheapest())[0]


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"generations": -1}, "generations"),
        ({"offspring": 0}, "offspring"),
        ({"max_level_switches": 0}, "max_level_switches"),
        ({"seed": 1.5}, "seed"),
        ({"start": "random"}, "start"),
        ({"checkpoint": 3}, "checkpoint"),
        ({"callback": "print"}, "callback"),
        ({"selection": ()}, "selection"),
        ({"selection": ((2, 64), (2, 128))}, "selection"),  # must end at 1 survivor
        ({"selection": ((1, 128), (1, 64))}, "selection"),  # tokens must not shrink
        ({"selection": ((1, 0),)}, "selection"),
        ({"time_limit": -1}, "time_limit"),
        ({"time_limit": "1m"}, "time_limit"),
    ],
)
def test_bad_options_raise_naming_them(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        EvoPressSolver(**options)


def test_evaluate_must_be_callable() -> None:
    table = random_table(1)
    with pytest.raises(TypeError, match="evaluate"):
        EvoPressSolver(generations=1).solve(table, budget_between(table, 0.5), evaluate=3.0)


def test_lists_from_json_are_normalised() -> None:
    solver = SOLVERS.get("evopress", selection=[[2, 64], [1, None]])
    assert solver.selection == ((2, 64), (1, None))


def test_reduces_measured_kl_on_a_tiny_model(tiny_llama, tiny_calib) -> None:
    from bitalloc.backends.kl_evaluator import KLEvaluator

    fmts = ["int2-g32", "int3-g32", "int4-g32", "int8-g32"]
    space = ba.SearchSpace.from_model(tiny_llama, fmts, tie=None)
    table = ba.estimate(tiny_llama, space, method="weight_error")
    budget = Budget.avg_bits(3.6)
    solver = EvoPressSolver(
        generations=6, offspring=5, selection=((2, 64), (1, None)), start="uniform"
    )
    kl = KLEvaluator(tiny_llama, tiny_calib, space)
    with kl:
        sol = ba.solve(table, budget, solver, evaluate=kl)
    start = ba.solve(table, budget, "uniform")
    assert budget.residual(sol) >= 0 and sol.meta["evaluations"] == kl.calls
    assert math.isclose(kl(start), sol.meta["start_fitness"], rel_tol=1e-9)
    assert kl(sol) == pytest.approx(sol.meta["fitness"], rel=1e-9)
    assert kl(sol) < kl(start)


def test_search_facade_passes_the_kl_evaluator(tiny_llama, tiny_calib) -> None:
    fmts = ["int2-g32", "int4-g32", "int8-g32"]
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    solver = EvoPressSolver(generations=2, offspring=3, selection=((1, 32),))
    sol = ba.search(tiny_llama, tiny_calib, 4.0, formats=fmts, estimator="weight_error",
                    solver=solver)  # fmt: skip
    assert sol.meta["fitness_source"] == "evaluate" and sol.meta["evaluations"] > 0
    assert all(np.array_equal(v, before[k]) for k, v in tiny_llama.state_dict().items())


def test_search_fitness_choice(tiny_llama, tiny_calib, monkeypatch) -> None:
    """auto: measured KL for evopress, the table for nsga2; kl/table force it; bad values
    and kl without a black-box solver are refused with the argument named."""
    from bitalloc.solvers.nsga2 import Nsga2Solver

    fmts = ["int2-g32", "int4-g32", "int8-g32"]
    kw = {"formats": fmts, "estimator": "weight_error"}
    evo = EvoPressSolver(generations=1, offspring=2, selection=((1, 32),), start="uniform")
    table_run = ba.search(tiny_llama, tiny_calib, 4.0, solver=evo, fitness="table", **kw)
    assert table_run.meta["fitness_source"] == "table"
    nsga = Nsga2Solver(pop_size=4, n_gen=2)
    calls: list[int] = []

    import bitalloc.backends.kl_evaluator as kle

    real = kle.KLEvaluator.__call__

    def counting(self, solution, *, tokens=None):  # noqa: ANN001, ANN202
        calls.append(1)
        return real(self, solution, tokens=tokens)

    monkeypatch.setattr(kle.KLEvaluator, "__call__", counting)
    ba.search(tiny_llama, tiny_calib, 4.0, solver=nsga, **kw)
    assert not calls  # auto: nsga2 optimises the table
    ba.search(tiny_llama, tiny_calib, 4.0, solver=nsga, fitness="kl", **kw)
    assert calls  # forced: measured KL
    with pytest.raises(ValueError, match="`fitness` must be one of auto, kl, table"):
        ba.search(tiny_llama, tiny_calib, 4.0, solver=evo, fitness="measured", **kw)
    with pytest.raises(ValueError, match="needs a black-box solver"):
        ba.search(tiny_llama, tiny_calib, 4.0, solver="ilp", fitness="kl", **kw)


def test_cli_search_with_evopress(tiny_model_dir: Path, tmp_path: Path) -> None:
    from bitalloc.cli import main

    out, ckpt = tmp_path / "plan.json", tmp_path / "evo.json"
    args = ["search", "--model", str(tiny_model_dir), "--formats", "int2-g32,int4-g32",
            "--n-samples", "2", "--seq-len", "32", "--avg-bits", "3.5", "--no-cache", "-q",
            "--estimator", "weight_error", "--solver", "evopress", "--generations", "2",
            "--offspring", "3", "--checkpoint", str(ckpt), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    plan = json.loads(out.read_text())
    assert plan["meta"]["fitness_source"] == "evaluate" and plan["avg_bits"] <= 3.5
    assert json.loads(ckpt.read_text())["generation"] == 2
    bad = [a if a != "evopress" else "ilp" for a in args]
    assert main(bad) == 2  # --generations is not an ilp option


def test_initial_plan_is_the_start_and_never_lost() -> None:
    table = random_table(21, n_units=14, formats=FORMATS4, ties=())
    budget = budget_between(table, 0.5)
    fit = interacting(table)
    initial = ba.solve(table, budget, "greedy")
    sol = EvoPressSolver(generations=6, offspring=4, selection=((1, None),)).solve(
        table, budget, evaluate=fit, initial=initial
    )
    assert sol.meta["start_fitness"] == pytest.approx(fit(initial), rel=1e-12)
    assert sol.meta["fitness"] <= sol.meta["start_fitness"]
    assert budget.residual(sol) >= 0


def test_bad_initial_plan_is_refused_naming_it() -> None:
    table = random_table(21, n_units=14, formats=FORMATS4, ties=())
    budget = budget_between(table, 0.5)
    solver = EvoPressSolver(generations=2, offspring=2, selection=((1, None),))
    widest = tuple(
        max(u.allowed, key=lambda k: ba.QuantFormat.parse(k).bits) for u in table.space.units
    )
    over = Solution(space=table.space, choice=widest, status=Status.FEASIBLE)
    with pytest.raises(ValueError, match="`initial` does not fit the budget"):
        solver.solve(table, budget, evaluate=interacting(table), initial=over)
    with pytest.raises(TypeError, match="`initial` must be a Solution"):
        solver.solve(table, budget, initial="ilp")  # type: ignore[arg-type]
    other = random_table(3, n_units=5, formats=FORMATS4, ties=())
    foreign = ba.solve(other, budget_between(other, 0.5), "ilp")
    with pytest.raises(ValueError, match="another search space"):
        solver.solve(table, budget, initial=foreign)
