"""EvoPress: (1 + lambda) evolutionary search with level-switch mutation and multi-step selection.

Sieberling, Kuznedelev, Kurtic & Alistarh, "EvoPress: Accurate Dynamic Model Compression via
Evolutionary Search", ICML 2025 (arXiv 2410.14649); defaults and details in algorithms.md
section 1. The fitness is a black box (measured KL of the compressed model, an
:class:`~bitalloc.solvers.base.Evaluator`), so the search does not rely on the additivity that
the table-based solvers assume. Pure numpy: the torch evaluator lives in
:mod:`bitalloc.backends.kl_evaluator` (on the variant cache of
:mod:`bitalloc.backends.variants`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from . import SOLVERS
from ._evo import (
    Ladders,
    check_state,
    finite,
    group_choice,
    load_state,
    offspring,
    run_key,
    save_state,
)
from ._mckp import feasible_start
from .base import Evaluator, SolverBase, infeasible, make_solution, provenance
from .base import start as start_problem

STARTS = ("ilp", "uniform", "greedy")
Step = tuple[int, int | None]


@SOLVERS.register("evopress")
@dataclass(frozen=True)
class EvoPressSolver(SolverBase):
    """EvoPress evolutionary search over per-group format levels (Sieberling et al., 2025).

    State: one parent plan (``x``, a level per tie-merged group). Per generation:

    1. draw ``offspring`` distinct children by level-switch mutation: ``k = min(U1, U2)``,
       ``U ~ Uniform{1..max_level_switches}`` times raise a random group one level and lower
       another one (drawn among those that bring memory back under the budget); children
       breaking any budget row are discarded, so **no candidate ever leaves the budget**;
    2. multi-step selection: for each step ``(survivors, tokens)`` of ``selection`` every
       candidate is scored by ``evaluate(plan, tokens=tokens)`` and the best ``survivors``
       move on; the parent (with its fitness on the last step's tokens) joins before the last
       step, whose single survivor is the next parent (elitist; ties prefer the child).

    Without ``evaluate`` the fitness is the table's predicted loss ``sum_g v[g, x_g]`` (tokens
    are ignored), so the solver also runs on a table alone; a start proven OPTIMAL for the
    table (``start="ilp"``) is then returned without evolving, since nothing can beat it. The
    start plan comes from the registered solver ``start`` on the table. Status FEASIBLE; same
    seed -> same plan.

    Args:
        generations: number of generations (paper: 150 for quantization).
        offspring: children per generation, lambda (paper: 128; 8..64 measured equally good).
        selection: steps ``(survivors, tokens)``; survivors non-increasing and ending at 1
            (a step with fewer candidates keeps them all), tokens non-decreasing (``None`` =
            every calibration token). Paper, quantization: ``((16, 2048), (4, 16384),
            (1, 131072))``; its "super-fast" schedule is ``((1, 512), (1, 8192))``.
        seed: seed of the mutation RNG.
        start: ``"ilp"`` (exact additive optimum), ``"greedy"`` or ``"uniform"`` (the
            largest common format; the cheapest plan when none fits).
        max_level_switches: largest number of raise/lower pairs in one mutation (paper: 3).
        checkpoint: JSON file written atomically after every generation (RNG state, parent,
            fitness history); an existing file of the same run is resumed, and a resumed run
            ends with exactly the plan of an uninterrupted one (given a deterministic
            ``evaluate``). ``generations`` may be raised to extend a finished run.
        callback: ``callback(done, total, "evopress")`` after every generation.
        time_limit: seconds of evolution (after the start plan is scored) after which no new
            generation is begun; the best plan so far is returned with status LIMIT.

    ``meta`` holds ``start``, ``start_objective``, ``start_fitness``, ``fitness``,
    ``history`` (parent fitness after each generation), ``evaluations``, ``fitness_source``
    (``"evaluate"`` or ``"table"``) and ``resumed_at`` (generation, or None).

    Example:
        >>> sol = EvoPressSolver(generations=20).solve(table, budget, evaluate=kl)
    """

    generations: int = 50
    offspring: int = 16
    selection: tuple[Step, ...] = ((4, 2048), (1, 8192))
    seed: int = 0
    start: str = "ilp"
    max_level_switches: int = 3
    checkpoint: str | os.PathLike[str] | None = None
    callback: Callable[[int, int, str], None] | None = field(
        default=None, compare=False, repr=False
    )
    time_limit: float | None = None

    name: ClassVar[str]
    black_box: ClassVar[bool] = True
    prefers_measured: ClassVar[bool] = True  # search(fitness="auto") gives it the measured KL

    def __post_init__(self) -> None:
        for opt, low in (("generations", 0), ("offspring", 1), ("max_level_switches", 1)):
            val = getattr(self, opt)
            if isinstance(val, bool) or not isinstance(val, int) or val < low:
                raise ValueError(f"`{opt}` must be an int >= {low}, got {val!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"`seed` must be an int, got {self.seed!r}")
        if self.start not in STARTS:
            raise ValueError(f"`start` must be one of {STARTS}, got {self.start!r}")
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, os.PathLike)):
            raise ValueError(f"`checkpoint` must be a file path or None, got {self.checkpoint!r}")
        if self.callback is not None and not callable(self.callback):
            raise ValueError(f"`callback` must be callable or None, got {self.callback!r}")
        limit = self.time_limit
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit >= 0
        ):
            raise ValueError(
                f"`time_limit` must be a number of seconds >= 0 or None, got {limit!r}"
            )
        object.__setattr__(self, "selection", _check_selection(self.selection))

    def options(self) -> dict[str, Any]:
        """JSON-safe options (no callback; the checkpoint as a string)."""
        opts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        opts.pop("callback")
        opts["selection"] = [list(s) for s in self.selection]
        opts["checkpoint"] = None if self.checkpoint is None else os.fspath(self.checkpoint)
        return opts

    def solve(
        self,
        table: SensitivityTable,
        budget: Budget,
        evaluate: Evaluator | None = None,
        *,
        initial: Solution | None = None,
    ) -> Solution:
        """Evolve a plan under ``budget``; ``evaluate(plan, tokens=n)`` is the fitness (lower
        is better; default: the table's predicted loss). INFEASIBLE when no start plan fits.
        ``initial``: start from this plan (of the table's space, within every budget row)
        instead of the ``start`` solver's."""
        problem, started, early = start_problem(self, table, budget)
        if early is not None:
            return self._with_meta(early, self._meta(table, budget, started))
        if evaluate is not None and not callable(evaluate):
            raise TypeError(f"`evaluate` must be callable, got {type(evaluate).__name__}")
        if initial is None:
            first, optimal = self._start_plan(problem, table, budget)
        else:
            first, optimal = _initial_choice(problem, table, budget, initial), False
        if isinstance(first, Solution):
            return self._with_meta(first, self._meta(table, budget, started))
        run = _Run(self, problem, table, evaluate)
        run.resume_or_begin(first)
        if not (optimal and evaluate is None):  # nothing beats a proven table optimum
            run.evolve()
        meta = {**self._meta(table, budget, started), **run.summary(first)}
        status = Status.LIMIT if run.stopped_early else Status.FEASIBLE
        sol = make_solution(problem, table, budget, run.parent, status, meta)
        if run.stopped_early:
            msg = (
                f"time limit {self.time_limit:g} s reached after {run.generation} of "
                f"{self.generations} generations; best plan so far"
            )
            sol = dataclasses.replace(sol, message=msg)
        return sol

    # ------------------------------------------------------------------ helpers
    def _start_plan(
        self, problem: Problem, table: SensitivityTable, budget: Budget
    ) -> tuple[np.ndarray | Solution, bool]:
        """Per-group start choice (or the start solver's INFEASIBLE result) and whether it is
        a proven optimum of the table."""
        sol = SOLVERS.get(self.start).solve(table, budget)
        if not sol.success:
            if self.start != "uniform":
                return sol, False
            first = feasible_start(problem)  # no common format fits: the cheapest plan
            if first is None:
                msg = "evopress found no start plan meeting every constraint (try start='ilp')"
                return infeasible(problem, table, budget, {}, msg), False
            return first, False
        return group_choice(problem, table, sol), sol.status is Status.OPTIMAL

    def _meta(self, table: SensitivityTable, budget: Budget, started: float) -> dict[str, Any]:
        meta = provenance(self, table, budget, started)
        meta["solver_options"] = self.options()
        return meta

    @staticmethod
    def _with_meta(sol: Solution, meta: dict[str, Any]) -> Solution:
        return dataclasses.replace(sol, meta=meta)


def _initial_choice(
    problem: Problem, table: SensitivityTable, budget: Budget, plan: Any
) -> np.ndarray:
    """Per-group choice of the ``initial`` plan (ValueError unless it is a plan of the table's
    space that keeps tied units together and fits every budget row)."""
    if not isinstance(plan, Solution):
        raise TypeError(f"`initial` must be a Solution, got {type(plan).__name__}")
    if [u.name for u in plan.space.units] != [u.name for u in table.space.units]:
        raise ValueError("`initial` is a plan for another search space than the table")
    unknown = sorted(set(plan.choice) - set(table.space.keys))
    if unknown:
        raise ValueError(f"`initial` uses formats the table does not have: {unknown}")
    if any(len({plan.choice[i] for i in m}) > 1 for m in problem.members):
        raise ValueError("`initial` gives tied units different formats")
    groups = group_choice(problem, table, plan)
    if not np.all(np.isfinite(problem.values[np.arange(len(groups)), groups])):
        raise ValueError("`initial` gives a unit a format it may not take")
    if any(r < 0 for r in budget.residuals(plan).values()):
        raise ValueError(f"`initial` does not fit the budget ({budget.describe()})")
    return groups


def _check_selection(selection: Any) -> tuple[Step, ...]:
    """Normalise ``selection`` to a tuple of ``(survivors, tokens)`` pairs (ValueError)."""
    valid = "a non-empty sequence of (survivors, tokens) pairs, e.g. ((4, 2048), (1, 8192))"
    if isinstance(selection, (str, bytes)) or not isinstance(selection, Sequence) or not selection:
        raise ValueError(f"`selection` must be {valid}, got {selection!r}")
    steps: list[Step] = []
    for step in selection:
        if isinstance(step, (str, bytes)) or not isinstance(step, Sequence) or len(step) != 2:
            raise ValueError(f"`selection` must be {valid}, got step {step!r}")
        keep, tokens = step
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`selection` survivors must be ints >= 1, got {keep!r}")
        if tokens is not None and (
            isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1
        ):
            raise ValueError(f"`selection` tokens must be ints >= 1 or None, got {tokens!r}")
        steps.append((keep, tokens))
    keeps = [k for k, _ in steps]
    toks = [math.inf if t is None else t for _, t in steps]
    if keeps[-1] != 1 or keeps != sorted(keeps, reverse=True):
        raise ValueError(f"`selection` survivors {keeps} must be non-increasing and end at 1")
    if toks != sorted(toks):
        raise ValueError(f"`selection` tokens {[t for _, t in steps]} must be non-decreasing")
    return tuple(steps)


class _Run:
    """Mutable state of one EvoPress run (parent, RNG, history), saved to the checkpoint."""

    def __init__(
        self,
        solver: EvoPressSolver,
        problem: Problem,
        table: SensitivityTable,
        evaluate: Evaluator | None,
    ) -> None:
        self.solver, self.problem, self.table, self.evaluate = solver, problem, table, evaluate
        self.ladders = Ladders.build(problem)
        identity = {**solver.options(), "evaluate": evaluate is not None}
        for k in ("generations", "checkpoint", "time_limit"):
            identity.pop(k)
        self.key = run_key(problem, identity)
        self.rng = np.random.default_rng(solver.seed)
        self.history: list[float] = []
        self.evaluations = 0
        self.generation = 0
        self.resumed_at: int | None = None
        self.stopped_early = False
        self.seconds: list[float] = []

    def fitness(self, choice: np.ndarray, tokens: int | None) -> float:
        """``evaluate(plan, tokens=tokens)``, or the table's predicted loss."""
        if self.evaluate is None:
            return self.problem.total(choice)[0]
        self.evaluations += 1
        keys = self.table.space.keys
        plan = Solution(
            space=self.table.space,
            choice=tuple(keys[j] for j in self.problem.expand(choice)),
            status=Status.FEASIBLE,
            objective=self.problem.total(choice)[0],
        )
        return finite(self.evaluate(plan, tokens=tokens))

    def resume_or_begin(self, first: np.ndarray) -> None:
        path = self.solver.checkpoint
        state = load_state(path, self.key) if path is not None else None
        if state is None:
            self.parent = first
            self.parent_fit = self.start_fit = self.fitness(first, self.solver.selection[-1][1])
            return
        check_state(state, self.problem, path)  # type: ignore[arg-type]
        self.parent = np.asarray(state["parent"], dtype=np.int64)
        try:
            self.rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"`checkpoint` {os.fspath(path)!r}: bad `rng` state: {e}") from None  # type: ignore[arg-type]
        self.parent_fit, self.start_fit = float(state["fitness"]), float(state["start_fitness"])
        self.history = [float(h) for h in state["history"]]
        self.evaluations, self.generation = int(state["evaluations"]), int(state["generation"])
        self.resumed_at = self.generation

    def evolve(self) -> None:
        import time

        total, limit = self.solver.generations, self.solver.time_limit
        began = time.perf_counter()
        while self.generation < total:
            if limit is not None and time.perf_counter() - began >= limit:
                self.stopped_early = True
                break
            t0 = time.perf_counter()
            self.step()
            self.seconds.append(round(time.perf_counter() - t0, 3))
            self.generation += 1
            self.history.append(self.parent_fit)
            if self.solver.checkpoint is not None:
                save_state(self.solver.checkpoint, self.state())
            if self.solver.callback is not None:
                self.solver.callback(self.generation, total, "evopress")

    def step(self) -> None:
        """One generation: mutation, then multi-step selection with the parent at the end."""
        s = self.solver
        pool = offspring(
            self.problem, self.ladders, self.parent, self.rng, s.offspring, s.max_level_switches
        )
        if not pool:
            return
        for i, (keep, tokens) in enumerate(s.selection):
            fits = [self.fitness(c, tokens) for c in pool]
            if i == len(s.selection) - 1:
                pool, fits = [*pool, self.parent], [*fits, self.parent_fit]
            order = sorted(range(len(pool)), key=lambda k: (fits[k], k))[:keep]
            pool, fits = [pool[k] for k in order], [fits[k] for k in order]
        self.parent, self.parent_fit = pool[0], fits[0]

    def state(self) -> dict[str, Any]:
        return {
            "run": self.key,
            "generation": self.generation,
            "parent": self.parent.tolist(),
            "fitness": self.parent_fit,
            "start_fitness": self.start_fit,
            "history": self.history,
            "evaluations": self.evaluations,
            "rng": self.rng.bit_generator.state,
        }

    def summary(self, first: np.ndarray) -> dict[str, Any]:
        return {
            "start": self.solver.start,
            "start_objective": self.problem.total(first)[0],
            "start_fitness": self.start_fit,
            "fitness": self.parent_fit,
            "history": list(self.history),
            "evaluations": self.evaluations,
            "generations_run": self.generation,
            "seconds_per_generation": self.seconds,
            "fitness_source": "table" if self.evaluate is None else "evaluate",
            "resumed_at": self.resumed_at,
        }
