"""Contract every registered solver satisfies; subclass :class:`SolverContract` to run it.

The suite is parametrised over ``SOLVERS.names()``, so a newly registered solver is tested
automatically, and reads the capabilities each class declares (:class:`~bitalloc.solvers.base.
SolverBase`): solvers with ``exact = True`` must match the brute-force optimum; budgets with
extra linear rows (BOPs, latency) must be honoured, unless the class sets
``supports_constraints = False``; then the solver must refuse them with a ValueError.
:class:`BlackBoxContract` runs over ``solvers_with("black_box")``: such a solver takes
``evaluate=`` and returns the best in-budget plan it measured.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from bitalloc.search.budget import Budget, LinearConstraint
from bitalloc.search.formats import QuantFormat
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace, Unit
from bitalloc.search.table import SensitivityTable
from bitalloc.solvers import CAPABILITIES, SOLVERS, Solver, solvers_with
from bitalloc.solvers.brute_force import BruteForceSolver

FORMATS4 = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")
FORMATS5 = (*FORMATS4, "bf16")


def random_table(
    seed: int,
    n_units: int = 7,
    formats: Sequence[str] = FORMATS5,
    *,
    mask_prob: float = 0.15,
    ties: Sequence[int] = (2,),
    keep_first: bool = True,
) -> SensitivityTable:
    """A random table: shapes multiples of 64, values ~ sensitivity * 4**-bits * noise.

    ``ties`` gives the sizes of tie groups formed from the first units. ``mask_prob`` drops
    formats at random (``keep_first`` keeps ``formats[0]`` allowed everywhere, so a uniform
    plan always exists); tie groups always keep one common format.
    """
    rng = np.random.default_rng(seed)
    fmts = [QuantFormat.parse(f) for f in formats]
    labels: list[str | None] = []
    for t, size in enumerate(ties):
        labels += [f"t{t}"] * size
    labels += [None] * (n_units - len(labels))
    common = {lab: int(rng.integers(len(fmts))) for lab in sorted({x for x in labels if x})}
    units = []
    for i, lab in enumerate(labels[:n_units]):
        shape = (64 * int(rng.integers(1, 5)), 64 * int(rng.integers(1, 5)))
        keep = rng.random(len(fmts)) >= mask_prob
        keep[0] |= keep_first
        if lab is not None:
            keep[common[lab]] = True
        if not keep.any():
            keep[int(rng.integers(len(fmts)))] = True
        allowed = tuple(f.key for f, k in zip(fmts, keep) if k)
        units.append(Unit(name=f"layer{i}.proj", shape=shape, allowed=allowed, tie=lab))
    space = SearchSpace(units=tuple(units), formats=tuple(fmts))
    sens = rng.lognormal(0.0, 1.0, size=n_units)
    bits = np.array([f.bits for f in fmts], dtype=np.float64)
    values = sens[:, None] * 4.0 ** -bits[None, :] * rng.lognormal(0.0, 0.3, (n_units, len(fmts)))
    values = np.where(space.mask, values, np.inf)
    return SensitivityTable(space=space, values=values, estimator="random", meta={"seed": seed})


def budget_between(
    table: SensitivityTable, frac: float, *, uniform_feasible: bool = True
) -> Budget:
    """An avg-bits budget at ``frac`` of the way from the minimum to the maximum cost."""
    p = Problem.build(table, Budget.avg_bits(32.0))
    lo = p.min_cost()
    if uniform_feasible:
        common = p.allowed.all(axis=0)
        if common.any():
            lo = max(lo, float(np.where(p.allowed, p.costs, 0).sum(axis=0)[common].min()))
    bits = (lo + frac * (p.max_cost() - lo)) / table.space.numel
    return Budget.avg_bits(bits)


def random_constraint(
    table: SensitivityTable, seed: int, kind: str, frac: float
) -> LinearConstraint:
    """A BOPs row or a random per-(unit, format) latency table, with its limit at ``frac`` of
    the way from ``lo`` to the row's maximum; ``lo`` is the larger of the row's own minimum
    and its total when every unit takes ``formats[0]`` (so the cheapest plan of
    :func:`random_table` fits it)."""
    rng = np.random.default_rng(seed)
    space = table.space
    if kind == "bops":
        row = LinearConstraint.bops(1.0, activation_bits=8)
    else:
        lat = {
            u.name: {
                f.key: u.numel * (0.5 + f.bits / 8) * float(rng.lognormal(0.0, 0.25))
                for f in space.formats
                if f.key in u.allowed
            }
            for u in space.units
        }
        row = LinearConstraint.latency(lat, 1.0)
    p = Problem.build(table, Budget.avg_bits(32.0, [row]))
    low, high = float(p.extra_min()[0]), float(p.extra_max()[0])
    cost = row.unit_costs(space)
    if np.isfinite(cost[:, 0]).all():
        low = max(low, float(cost[:, 0].sum()))
    limit = low + frac * (high - low)
    return LinearConstraint.from_dict({**row.to_dict(), "limit": limit})


def row_slack_ok(budget: Budget, sol: Solution) -> bool:
    """Memory exact; extra rows up to float rounding of their sums (1e-9 relative)."""
    res = budget.residuals(sol)
    return res.pop("memory") >= 0 and all(
        res[c.name] >= -1e-9 * max(1.0, abs(c.limit)) for c in budget.constraints
    )


def oracle(table: SensitivityTable, budget: Budget) -> Solution:
    return BruteForceSolver().solve(table, budget)


class _Solvers:
    """How a contract builds the solver under test."""

    def options(self, name: str) -> dict[str, Any]:
        """Constructor options for solver ``name`` in these tests (defaults)."""
        return {}

    def make(self, name: str) -> Any:
        return SOLVERS.get(name, **self.options(name))


class SolverContract(_Solvers):
    """Properties every registered solver must have. Override :meth:`options` for extras."""

    seeds: Sequence[int] = tuple(range(6))
    fractions: Sequence[float] = (0.0, 0.1, 0.35, 0.7, 1.0, 1.2)

    @pytest.fixture(params=SOLVERS.names())
    def solver_name(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    def test_protocol_and_options(self, solver_name: str) -> None:
        """A frozen dataclass whose fields are its options; implements the Solver protocol."""
        solver = self.make(solver_name)
        assert isinstance(solver, Solver) and type(solver).name == solver_name
        assert dataclasses.is_dataclass(solver)
        assert SOLVERS.get(solver_name, **dataclasses.asdict(solver)) == solver
        fields = dataclasses.fields(solver)
        if fields:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(solver, fields[0].name, None)
        assert type(solver).__doc__ and len(type(solver).__doc__ or "") > 100
        assert all(isinstance(getattr(type(solver), c), bool) for c in CAPABILITIES)

    def test_budget_respected_and_complete(self, solver_name: str) -> None:
        solver = self.make(solver_name)
        for seed in self.seeds:
            table = random_table(seed)
            for frac in self.fractions:
                budget = budget_between(table, frac)
                sol = solver.solve(table, budget)
                assert sol.status in (Status.OPTIMAL, Status.FEASIBLE, Status.LIMIT), sol.message
                assert budget.residual(sol) >= 0
                assert len(sol.choice) == len(table.space)
                assert all(k in u.allowed for u, k in zip(table.space.units, sol.choice))
                assert math.isclose(sol.objective, _objective(table, sol), rel_tol=1e-12)
                assert sol.meta["solver"] == solver_name

    def test_ties_honoured(self, solver_name: str) -> None:
        solver = self.make(solver_name)
        for seed in self.seeds:
            table = random_table(seed, n_units=8, ties=(3, 2), mask_prob=0.3)
            sol = solver.solve(table, budget_between(table, 0.4))
            for members in table.space.tie_groups().values():
                assert len({sol.choice[i] for i in members}) == 1

    def test_infeasible_is_a_result(self, solver_name: str) -> None:
        table = random_table(0)
        problem = Problem.build(table, Budget.avg_bits(32.0))
        min_bits = problem.min_cost() / table.space.numel
        sol = self.make(solver_name).solve(table, Budget.avg_bits(0.9 * min_bits))
        assert sol.status is Status.INFEASIBLE and sol.choice == ()
        assert f"{min_bits:.6g}" in sol.message
        min_bytes = problem.min_cost() / 8
        sol = self.make(solver_name).solve(table, Budget.bytes(min_bytes - 1))
        assert sol.status is Status.INFEASIBLE and f"{min_bytes:.6g}" in sol.message

    def test_exact_minimum_budget(self, solver_name: str) -> None:
        """A budget equal to the cheapest plan's bytes is feasible (no tolerance slack)."""
        table = random_table(3)
        nbytes = Problem.build(table, Budget.avg_bits(32.0)).min_cost() / 8
        sol = self.make(solver_name).solve(table, Budget.bytes(nbytes))
        assert sol.success and sol.nbytes == nbytes

    def test_deterministic(self, solver_name: str) -> None:
        table = random_table(11, n_units=8)
        budget = budget_between(table, 0.3)
        a = self.make(solver_name).solve(table, budget)
        b = self.make(solver_name).solve(table, budget)
        assert a.choice == b.choice and a.objective == b.objective and a.status == b.status

    def test_not_better_than_optimum(self, solver_name: str) -> None:
        solver = self.make(solver_name)
        exact = type(solver).exact
        for seed in range(10):
            table = random_table(
                100 + seed,
                n_units=7,
                formats=FORMATS4,
                mask_prob=0.2,
                ties=(2,) if seed % 2 else (),
            )
            budget = budget_between(table, 0.15 + 0.07 * seed)
            best = oracle(table, budget)
            sol = solver.solve(table, budget)
            assert sol.objective >= best.objective * (1 - 1e-12)
            if exact:
                assert sol.status is Status.OPTIMAL
                assert math.isclose(sol.objective, best.objective, rel_tol=1e-9), seed

    def test_extra_constraints_respected(self, solver_name: str) -> None:
        """Every row of a budget with a BOPs or latency row holds; exact solvers match brute
        force. Solvers that set ``supports_constraints = False`` must refuse (ValueError)."""
        solver = self.make(solver_name)
        exact = type(solver).exact
        for seed in range(9):
            table = random_table(200 + seed, n_units=7, formats=FORMATS4, ties=(2,) * (seed % 2))
            frac = (0.05, 0.2, 0.4)[seed // 3]
            rows = [
                random_constraint(table, seed, kind, frac)
                for kind in (("bops",), ("latency",), ("bops", "latency"))[seed % 3]
            ]
            budget = budget_between(table, (0.8, 0.5, 1.0)[seed % 3]).with_constraints(*rows)
            if not type(solver).supports_constraints:
                with pytest.raises(ValueError, match="constraint"):
                    solver.solve(table, budget)
                return
            sol = solver.solve(table, budget)
            best = oracle(table, budget)
            assert best.status is Status.OPTIMAL
            assert sol.status in (Status.OPTIMAL, Status.FEASIBLE, Status.LIMIT), sol.message
            assert row_slack_ok(budget, sol), (seed, budget.residuals(sol))
            assert sol.objective >= best.objective * (1 - 1e-12)
            if exact:
                assert sol.status is Status.OPTIMAL
                assert math.isclose(sol.objective, best.objective, rel_tol=1e-9), seed

    def test_extra_constraint_below_its_minimum(self, solver_name: str) -> None:
        """A row below its own minimum gives INFEASIBLE naming the row and that minimum."""
        solver = self.make(solver_name)
        if not type(solver).supports_constraints:
            return
        table = random_table(4)
        row = random_constraint(table, 4, "latency", 0.0)
        low = float(Problem.build(table, Budget.avg_bits(32.0, [row])).extra_min()[0])
        bad = LinearConstraint.from_dict({**row.to_dict(), "limit": 0.99 * low})
        sol = solver.solve(table, Budget.avg_bits(32.0, [bad]))
        assert sol.status is Status.INFEASIBLE and sol.choice == ()
        assert "'latency'" in sol.message and f"{low:.6g}" in sol.message

    def test_evaluate_only_for_black_box(self, solver_name: str) -> None:
        """``solve(..., evaluate=)`` reaches black-box solvers; a table solver refuses it with
        a ValueError naming it."""
        import bitalloc as ba

        table = random_table(0)
        budget = budget_between(table, 0.5)
        if type(self.make(solver_name)).black_box:
            assert "evaluate" in inspect.signature(type(self.make(solver_name)).solve).parameters
            return
        with pytest.raises(ValueError, match=f"solver {solver_name!r} optimises the table"):
            ba.solve(table, budget, self.make(solver_name), evaluate=lambda s, **k: 0.0)

    def test_rejects_wrong_types(self, solver_name: str) -> None:
        table = random_table(0)
        with pytest.raises(TypeError, match="budget"):
            self.make(solver_name).solve(table, 3.0)
        with pytest.raises(TypeError, match="table"):
            self.make(solver_name).solve(table.values, Budget.avg_bits(3.0))


class BlackBoxContract(_Solvers):
    """What every black-box solver does with ``evaluate=``; override :meth:`options` to keep
    the runs short."""

    @pytest.fixture(params=solvers_with("black_box"))
    def solver_name(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    def test_returns_the_best_measured_plan(self, solver_name: str) -> None:
        """The evaluator (another table's loss, so the table's own optimum is not its optimum)
        is called, and the returned plan is within budget and the best in-budget plan
        measured."""
        for seed in range(3):
            table = random_table(300 + seed, n_units=6, formats=FORMATS4)
            other = random_table(400 + seed, n_units=6, formats=FORMATS4).values
            budget = budget_between(table, 0.4)
            evaluate = _Recorder(table.space, other)
            sol = self.make(solver_name).solve(table, budget, evaluate=evaluate)
            assert sol.success and budget.residual(sol) >= 0, sol.message
            seen = evaluate.seen
            fitting = [loss for loss, s in seen if budget.residual(s) >= 0]
            assert fitting, "the evaluator was never called on an in-budget plan"
            got = [loss for loss, s in seen if s.choice == sol.choice]
            assert got and min(got) == pytest.approx(min(fitting), rel=1e-12), seed


class _Recorder:
    """An evaluator: the loss of a plan under ``values`` (a table of the same space), with
    every call recorded."""

    def __init__(self, space: SearchSpace, values: np.ndarray) -> None:
        self.space, self.values = space, values
        self.seen: list[tuple[float, Solution]] = []

    def __call__(self, sol: Solution, *, tokens: int | None = None) -> float:
        cols = [self.space.keys.index(k) for k in sol.choice]
        loss = float(sum(self.values[i, j] for i, j in enumerate(cols)))
        self.seen.append((loss, sol))
        return loss


def _objective(table: SensitivityTable, sol: Solution) -> float:
    cols = [table.space.keys.index(k) for k in sol.choice]
    return float(sum(table.values[i, j] for i, j in enumerate(cols)))
