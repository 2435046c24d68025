"""NSGA-II (pymoo) over the plan: a Pareto set of (size, loss), or the best plan in a budget."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from . import SOLVERS
from ._fitness import Fitness
from ._mckp import feasible_start, greedy_choice, repair_batch
from .base import SolverBase, check_int_options, infeasible, make_solution, provenance, start

if TYPE_CHECKING:
    from ..search.frontier import Frontier

NO_START = (
    "nsga2 found no plan meeting every constraint (each row alone is satisfiable; use the "
    "exact solver 'ilp' to decide whether they are jointly)"
)


@SOLVERS.register("nsga2")
@dataclass(frozen=True)
class Nsga2Solver(SolverBase):
    """NSGA-II (Deb, Pratap, Agarwal & Meyarivan, IEEE TEVC 6(2), 2002) on pymoo (Blank & Deb,
    IEEE Access 8, 2020) with two objectives, minimised together::

        f1 = sum_g c[g, j_g] / numel        (average bits, exact memory accounting)
        f2 = sum_g v[g, j_g]  or  evaluate(plan)   (predicted or measured loss)

    Variables: one integer per group (free unit or tie group), the index of its format among
    the group's allowed formats sorted by cost, so SBX crossover and polynomial mutation (with
    rounding) move between neighbouring bit widths. A pymoo ``Repair`` makes every candidate
    fit the budget before it is scored: the group whose downgrade costs the least predicted
    loss per bit of overshoot removed is lowered until every row holds
    (:func:`~bitalloc.solvers._mckp.repair_batch`; Deb's constraint handling by repair,
    as recommended for tight budgets in pymoo#384). The initial population holds
    ``warm_start`` greedy plans (Shoham & Gersho's marginal-return rule) at budgets spread
    from the smallest plan to the cap, the rest is random.

    :meth:`solve` returns the scored plan of least loss under ``budget``; :meth:`frontier` the
    non-dominated set of every plan scored (a Pareto front of size vs loss).

    Args:
        pop_size: population size.
        n_gen: generations.
        seed: random seed (pymoo's generator; same seed, same result).
        crossover_prob: SBX crossover probability.
        crossover_eta: SBX distribution index.
        mutation_eta: polynomial mutation distribution index.
        warm_start: greedy plans placed in the initial population (0 = random only).

    Example:
        >>> front = Nsga2Solver(pop_size=100, n_gen=200).frontier(table)
    """

    pop_size: int = 40
    n_gen: int = 30
    seed: int = 0
    crossover_prob: float = 0.9
    crossover_eta: float = 15.0
    mutation_eta: float = 20.0
    warm_start: int = 8

    name: ClassVar[str]
    black_box: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_int_options(self, (("pop_size", 2), ("n_gen", 1), ("warm_start", 0), ("seed", None)))
        p = self.crossover_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"`crossover_prob` must be in [0, 1], got {p!r}")
        for arg in ("crossover_eta", "mutation_eta"):
            e = getattr(self, arg)
            if isinstance(e, bool) or not isinstance(e, (int, float)) or not e > 0:
                raise ValueError(f"`{arg}` must be a positive number, got {e!r}")

    def solve(
        self,
        table: SensitivityTable,
        budget: Budget,
        evaluate: Callable[..., float] | None = None,
    ) -> Solution:
        """The scored plan of least loss within ``budget`` (INFEASIBLE when none fits)."""
        problem, started, early = start(self, table, budget)
        if early is not None:
            return early
        fitness = self._run(problem, table, evaluate)
        meta = provenance(self, table, budget, started)
        if fitness is None:
            return infeasible(problem, table, budget, meta, NO_START)
        best = fitness.best()
        if best is None:
            return infeasible(problem, table, budget, meta, NO_START)
        meta.update(n_evaluations=fitness.n_evaluations, n_plans=len(fitness.archive))
        if evaluate is not None:
            meta.update(measured=fitness.measured(best))
        return make_solution(problem, table, budget, best, Status.FEASIBLE, meta)

    def frontier(
        self,
        table: SensitivityTable,
        budget: Budget | None = None,
        evaluate: Callable[..., float] | None = None,
    ) -> Frontier:
        """The Pareto set of (average bits, loss) of every plan scored, up to ``budget``
        (None = no cap: from the smallest to the largest plan)."""
        from ..search.frontier import Frontier

        if budget is None:
            budget = _no_cap(table)
        problem, started, early = start(self, table, budget)
        front_meta = {"solver": type(self).name, "budget": budget.to_dict()}
        if early is not None:
            return Frontier((early,), meta=front_meta)
        fitness = self._run(problem, table, evaluate)
        meta = provenance(self, table, budget, started)
        if fitness is None:
            return Frontier((infeasible(problem, table, budget, meta, NO_START),), meta=front_meta)
        meta.update(n_evaluations=fitness.n_evaluations, n_plans=len(fitness.archive))
        points, measured = [], []
        for choice, _, loss in fitness.pareto():
            sol = make_solution(problem, table, budget, choice, Status.FEASIBLE, meta)
            points.append(dataclasses.replace(sol, message=""))  # not "budget not binding"
            measured.append({} if evaluate is None else {"measured": loss})
        return Frontier(tuple(points), tuple(measured), front_meta)

    def _run(
        self,
        problem: Problem,
        table: SensitivityTable,
        evaluate: Callable[..., float] | None,
    ) -> Fitness | None:
        """Run NSGA-II; the returned Fitness archives every (repaired, feasible) plan scored."""
        fallback = feasible_start(problem)
        if fallback is None:
            return None
        fitness = Fitness(problem, table, evaluate)
        fitness(fallback)
        coding = _Coding(problem)
        if int(coding.n_opt.max()) == 1:  # a single plan: nothing to search
            return fitness
        from pymoo.optimize import minimize

        algorithm = _algorithm(self, coding, fallback, self._initial(problem, coding, fallback))
        minimize(
            _pymoo_problem(coding, fitness, table.space.numel),
            algorithm,
            ("n_gen", self.n_gen),
            seed=self.seed,
            verbose=False,
        )
        return fitness

    def _initial(self, problem: Problem, coding: _Coding, fallback: np.ndarray) -> np.ndarray:
        """``pop_size`` starting plans (variable indices): greedy plans, then random."""
        rng = np.random.default_rng(self.seed)
        plans = [fallback]
        lo = problem.total(fallback)[1]
        n_warm = min(self.warm_start, self.pop_size - 1)
        for cap in np.linspace(lo, problem.capacity, n_warm + 1)[1:]:
            sub = dataclasses.replace(problem, capacity=float(cap))
            first = feasible_start(sub)
            if first is not None:
                plans.append(greedy_choice(sub, first))
        x = [coding.encode(p) for p in plans]
        n_rand = self.pop_size - len(x)
        x += list(rng.integers(0, coding.n_opt, size=(max(n_rand, 0), problem.n_groups)))
        return np.array(x, dtype=np.int64)


class _Coding:
    """Per group its allowed options sorted by (cost, value): variable index <-> column."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        g, f = problem.values.shape
        self.n_opt = problem.allowed.sum(axis=1).astype(np.int64)
        self.order = np.zeros((g, f), dtype=np.int64)
        self.pos = np.full((g, f), -1, dtype=np.int64)
        for k in range(g):
            idx = np.flatnonzero(problem.allowed[k])
            idx = idx[np.lexsort((problem.values[k, idx], problem.costs[k, idx]))]
            self.order[k, : len(idx)] = idx
            self.order[k, len(idx) :] = idx[-1]
            self.pos[k, idx] = np.arange(len(idx))
        self.rows = np.arange(g)

    def decode(self, x: np.ndarray) -> np.ndarray:
        """Variable indices ``[N, G]`` (any numbers; rounded and clipped) -> columns."""
        xi = np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, self.n_opt - 1).astype(int)
        return self.order[self.rows, xi]

    def encode(self, cols: np.ndarray) -> np.ndarray:
        return self.pos[self.rows, np.asarray(cols, dtype=np.int64)]


def _no_cap(table: SensitivityTable) -> Budget:
    """A bytes budget equal to the largest plan (nothing is over it)."""
    probe = Problem.build(table, Budget.avg_bits(1.0))
    return Budget.bytes(float(np.ceil(probe.max_cost() / 8.0)))


def _algorithm(opts: Nsga2Solver, coding: _Coding, fallback: np.ndarray, x0: np.ndarray) -> Any:
    """NSGA-II with integer SBX / polynomial mutation and the budget repair."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.repair import Repair
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair

    class BudgetRepair(Repair):  # type: ignore[misc]
        """Round, then lower the least damaging groups until every budget row holds."""

        def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:
            fixed, ok = repair_batch(coding.problem, coding.decode(X))
            fixed[~ok] = fallback
            return np.stack([coding.encode(c) for c in fixed]) if len(fixed) else X

    return NSGA2(
        pop_size=opts.pop_size,
        sampling=x0,
        crossover=SBX(
            prob=opts.crossover_prob, eta=opts.crossover_eta, vtype=float, repair=RoundingRepair()
        ),
        mutation=PM(eta=opts.mutation_eta, vtype=float, repair=RoundingRepair()),
        repair=BudgetRepair(),
        eliminate_duplicates=True,
    )


def _pymoo_problem(coding: _Coding, fitness: Fitness, numel: int) -> Any:
    """The pymoo problem: ``F = [avg bits, loss]`` per (already repaired) candidate."""
    from pymoo.core.problem import Problem as PymooProblem

    class Mckp(PymooProblem):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(
                n_var=coding.problem.n_groups, n_obj=2, xl=0, xu=coding.n_opt - 1, vtype=int
            )

        def _evaluate(self, X: np.ndarray, out: dict[str, Any], *a: Any, **k: Any) -> None:
            cols = coding.decode(X)
            bits = coding.problem.costs[coding.rows[None, :], cols].sum(axis=1)
            loss = [fitness(c) for c in cols]
            out["F"] = np.column_stack([bits / numel, loss])

    return Mckp()
