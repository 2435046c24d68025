"""The default search: exact solve on the table, then measured correction, then EvoPress.

:func:`refine` takes a sensitivity table (priced with the backend that will build the plan)
and improves its exact optimum with measurements of the real model:

1. **table + ILP**: the exact optimum of the additive table at the budget, measured; beside
   it the simple rules at the same budget (the largest uniform format that fits, NNCF's
   two-precision rule), measured too, so the result never measures worse than they do on
   the calibration tokens.
2. **measured correction**: a spread of plans around the budget
   (:func:`bitalloc.solvers.sampling.near_plans`) is scored by measured KL on calibration
   tokens; the table is corrected by per-bit-width / per-layer-type multipliers fitted to
   those KLs (:func:`bitalloc.search.correction.fit_correction`) and re-solved exactly; the
   new optimum is measured, added to the fit, and the loop repeats ``correction_rounds``
   times.
3. **EvoPress** from the best plan measured so far with staged KL (few tokens for every offspring,
   more for the survivors), on the same variants, with block replay
   (:class:`~bitalloc.backends.replay.BlockReplay`).

The best measured plan wins (EvoPress is elitist, and the raw and corrected optima stay in the
race). ``effort`` picks the schedule (:data:`SCHEDULES`); ``time_limit`` (seconds, counted
from the start of :func:`refine`) stops after the stage running when it expires and returns
the best plan measured so far with status LIMIT: the table's exact optimum when nothing was
measured yet, never nothing. Everything is seeded: same seed, same plan.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .budget import Budget
from .solution import Solution, Status
from .table import SensitivityTable

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


class Effort(str, enum.Enum):
    """How much measuring the default search does (see :data:`SCHEDULES`)."""

    FAST = "fast"
    DEFAULT = "default"
    MAX = "max"


@dataclass(frozen=True)
class Schedule:
    """Work of one effort level."""

    correction_plans: int  # plans measured for the first correction fit (0 = no correction)
    correction_rounds: int  # re-solve -> measure -> refit rounds
    tokens: int  # calibration tokens of every final measurement (the fitness)
    generations: int  # EvoPress generations (0 = no EvoPress)
    offspring: int
    selection: tuple[tuple[int, int], ...]  # EvoPress (survivors, tokens) steps


SCHEDULES: dict[Effort, Schedule] = {
    Effort.FAST: Schedule(12, 1, 1024, 0, 8, ((1, 1024),)),
    Effort.DEFAULT: Schedule(12, 2, 2048, 10, 8, ((2, 512), (1, 2048))),
    Effort.MAX: Schedule(48, 3, 4096, 120, 16, ((4, 1024), (1, 4096))),
}


def refine(
    model: nn.Module,
    calib: Any,
    table: SensitivityTable,
    budget: Budget,
    *,
    backend: Any,
    effort: Effort | str = Effort.DEFAULT,
    time_limit: float | None = None,
    seed: int = 0,
    callback: Any = None,
) -> Solution:
    """Measured refinement of ``table``'s exact optimum under ``budget`` (module doc).

    ``backend`` must be the one ``table`` was priced with (a
    :class:`~bitalloc.backends.quantizer.Prepared` backend shares its variants with the table).
    The KL is measured on ``calib``'s tokens; hold other text out for evaluation.
    """
    from ..backends.kl_evaluator import KLEvaluator
    from ..solvers import SOLVERS

    effort = _effort(effort)
    _check_limit(time_limit)
    sched = SCHEDULES[effort]
    clock = _Clock(time_limit)
    first = SOLVERS.get("ilp").solve(table, budget)
    if not first.success:
        return first
    run = _Race(first, sched.tokens, budget, table)
    with KLEvaluator(model, calib, table.space, backend) as kl:
        tokens = min(sched.tokens, kl.calib.n_tokens)
        run.tokens = tokens
        stages: list[tuple[str, Any]] = [
            ("measure", lambda: run.measure(first, "ilp", kl)),
            ("anchors", lambda: _anchors(run, table, budget, kl)),
        ]
        if sched.correction_plans:
            stages.append(
                ("correction", lambda: _correct(run, table, budget, sched, kl, seed, clock))
            )
        if sched.generations:
            stages.append(("evopress", lambda: _evolve(run, budget, sched, kl, seed, clock)))
        for name, stage in stages:
            if clock.expired():
                run.limit = (
                    run.limit or f"time limit {time_limit:g} s reached before the {name} stage"
                )
                break
            t0 = time.perf_counter()
            stage()
            run.seconds[name] = round(time.perf_counter() - t0, 2)
            if callback is not None:
                callback(len(run.seconds), len(stages), f"search: {name}")
        replay = kl.replay.stats if kl.replay is not None else None
    return run.result(table, effort, replay)


def _effort(effort: Effort | str) -> Effort:
    try:
        return Effort(effort)
    except ValueError:
        valid = ", ".join(e.value for e in Effort)
        raise ValueError(f"`effort` must be one of {valid}, got {effort!r}") from None


def _check_limit(limit: Any) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit >= 0:
        raise ValueError(f"`time_limit` must be a number of seconds >= 0 or None, got {limit!r}")


class _Clock:
    def __init__(self, limit: float | None) -> None:
        self.limit, self.start = limit, time.perf_counter()

    def left(self) -> float | None:
        return None if self.limit is None else self.limit - (time.perf_counter() - self.start)

    def expired(self) -> bool:
        left = self.left()
        return left is not None and left <= 0


class _Race:
    """Every measured plan with its KL; the best one is the result."""

    def __init__(
        self, first: Solution, tokens: int, budget: Budget, table: SensitivityTable
    ) -> None:
        self.first, self.tokens, self.budget, self.table = first, tokens, budget, table
        self.scored: list[tuple[float, str, Solution]] = []
        self.seconds: dict[str, float] = {}
        self.info: dict[str, Any] = {}
        self.limit = ""
        self.corrected: SensitivityTable | None = None

    def measure(self, plan: Solution, origin: str, kl: Any) -> float:
        value = float(kl(plan, tokens=self.tokens))
        self.scored.append((value, origin, plan))
        return value

    def best(self) -> tuple[float, str, Solution] | None:
        """The lowest measured KL among the plans within the budget (plans measured at a
        shifted budget inform the correction but never win)."""
        fits = [s for s in self.scored if self.budget.residual(s[2]) >= 0]
        return min(fits, key=lambda s: s[0], default=None)

    def result(self, table: SensitivityTable, effort: Effort, replay: Any) -> Solution:
        top = self.best()
        plan = self.first if top is None else top[2]
        by_origin: dict[str, float] = {}
        for value, origin, _ in self.scored:
            by_origin[origin] = min(value, by_origin.get(origin, float("inf")))
        meta = {
            **self.first.meta,
            "solver": "bitalloc",
            "pipeline": {
                "effort": effort.value,
                "winner": "ilp" if top is None else top[1],
                "fitness": None if top is None else top[0],
                "fitness_tokens": self.tokens,
                "measured": by_origin,
                "plans_measured": len(self.scored),
                "seconds": self.seconds,
                **self.info,
                **(_replay_info(replay) if replay is not None else {}),
            },
        }
        status = Status.LIMIT if self.limit else Status.FEASIBLE
        return Solution(
            space=plan.space,
            choice=plan.choice,
            status=status,
            objective=_objective(table, plan),
            message=self.limit,
            meta=meta,
        )


def _objective(table: SensitivityTable, plan: Solution) -> float:
    col = {k: j for j, k in enumerate(table.space.keys)}
    return float(sum(table.values[i, col[k]] for i, k in enumerate(plan.choice)))


def _replay_info(stats: Any) -> dict[str, Any]:
    return {
        "block_forwards_run": stats.run,
        "block_forwards_skipped": stats.skipped,
        "replay_fraction_run": round(stats.fraction_run, 4),
    }


ANCHORS = ("uniform", "nncf_ratio")
"""Rules measured beside the table's optimum (:func:`_anchors`)."""


def _anchors(run: _Race, table: SensitivityTable, budget: Budget, kl: Any) -> None:
    """Measure each rule of :data:`ANCHORS` whose plan fits the budget and differs from those
    measured; a rule that cannot serve this space or budget (no common format) is left out."""
    from ..solvers import SOLVERS

    for name in ANCHORS:
        plan = SOLVERS.get(name).solve(table, budget)
        if not plan.success or budget.residual(plan) < 0:
            continue
        if any(plan.choice == p.choice for _, _, p in run.scored):
            continue
        run.measure(plan, name, kl)


def _correct(
    run: _Race,
    table: SensitivityTable,
    budget: Budget,
    sched: Schedule,
    kl: Any,
    seed: int,
    clock: _Clock,
) -> None:
    """Measure plans around the budget, fit the correction, re-solve, repeat."""
    from ..solvers import SOLVERS
    from ..solvers.sampling import near_plans
    from .correction import fit_correction

    plans = near_plans(table, budget, sched.correction_plans, seed=seed)
    measured = [(plans[0], run.scored[0][0])]  # the ILP optimum, measured already
    for p in plans[1:]:
        if clock.expired():
            run.limit = f"time limit reached after {len(measured)} correction plans"
            break
        measured.append((p, run.measure(p, "sample", kl)))
    if len(measured) < 4:
        return
    history = []
    for _ in range(max(sched.correction_rounds, 1)):
        fit = fit_correction(table, [p for p, _ in measured], [y for _, y in measured])
        corrected = fit.apply(table)
        plan = SOLVERS.get("ilp").solve(corrected, budget)
        if not plan.success or any(plan.choice == p.choice for p, _ in measured):
            history.append(fit.to_dict())
            run.corrected = corrected if plan.success else table
            break
        y = run.measure(plan, "corrected", kl)
        measured.append((plan, y))
        history.append({**fit.to_dict(), "measured": y})
        run.corrected = corrected
        if clock.expired():
            run.limit = run.limit or "time limit reached during the correction rounds"
            break
    run.info["correction"] = history


def _evolve(
    run: _Race, budget: Budget, sched: Schedule, kl: Any, seed: int, clock: _Clock
) -> None:
    """EvoPress from the best plan measured so far (the corrected table, when there is one,
    orders the mutation ladders), fitness on the race's tokens."""
    from ..solvers import SOLVERS

    table = run.corrected if run.corrected is not None else run.table
    top = run.best()
    if top is None:
        return
    steps = tuple((keep, min(tokens, run.tokens)) for keep, tokens in sched.selection)
    steps = steps[:-1] + ((1, run.tokens),)
    left = clock.left()
    solver: Any = SOLVERS.get(
        "evopress",
        generations=sched.generations,
        offspring=sched.offspring,
        selection=steps,
        seed=seed,
        time_limit=None if left is None else max(left, 0.0),
    )
    sol = solver.solve(table, budget, evaluate=kl, initial=top[2])
    if sol.success:
        run.scored.append((float(sol.meta["fitness"]), "evopress", sol))
        per_gen = sol.meta.get("seconds_per_generation", [])
        run.info["evopress"] = {
            "generations_run": sol.meta.get("generations_run"),
            "evaluations": sol.meta.get("evaluations"),
            "start_fitness": sol.meta.get("start_fitness"),
            "seconds_per_generation": round(sum(per_gen) / len(per_gen), 3) if per_gen else None,
        }
        if sol.status is Status.LIMIT:
            run.limit = sol.message
