"""Validate an estimator: does its predicted loss rank real plans like their measured loss?

Random feasible plans are drawn at several budgets, each plan's predicted loss (the sum of
its table entries, the solvers' additivity assumption) is compared with its measured KL to
the reference model on held-out windows, and the agreement is reported as Spearman's rho and
Kendall's tau (scipy.stats). No anchor system reports this; it is what tells whether a solver
optimising the table optimises the model.

With ``correct=K``, K further random plans (another seed, so none is a validation plan) are
measured the same way, the measured correction of the additive table
(:func:`bitalloc.search.correction.fit_correction`, the default pipeline's) is fitted to them,
and the validation plans are ranked again by the corrected prediction: the before/after
figures tell whether the correction generalises to plans it was not fitted on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .search.budget import Budget
from .search.problem import Problem
from .search.solution import Solution, Status
from .search.table import SensitivityTable

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True, slots=True)
class PlanScore:
    """One validation plan: its budget, size, predicted loss and measured quality."""

    budget_bits: float
    avg_bits: float
    predicted: float
    kl: float
    ppl: float


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """Rank agreement between predicted and measured loss over random plans."""

    estimator: str
    spearman: float
    kendall: float
    spearman_ppl: float
    kendall_ppl: float
    spearman_within: float
    """Mean over budgets of Spearman(predicted, KL) among the plans of the same budget: the
    harder test (across budgets, any estimator ranks a 2.75-bit plan below a 3.75-bit one)."""
    plans: tuple[PlanScore, ...]
    time_s: float
    corrected: CorrectedRanks | None = None
    """The same validation plans ranked by the corrected table (``correct=K``), else None."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plans"] = [asdict(p) for p in self.plans]
        return d


@dataclass(frozen=True, slots=True)
class CorrectedRanks:
    """Rank agreement of the corrected prediction with the measured KL of the validation
    plans, the correction having been fitted to ``fit_plans`` other plans."""

    spearman: float
    kendall: float
    spearman_within: float
    fit_plans: int
    correction: dict[str, Any]


def random_plans(
    table: SensitivityTable, budgets: Sequence[float], n_plans: int, *, seed: int = 0
) -> list[Solution]:
    """``n_plans`` feasible plans spread over ``budgets`` (average bits).

    Each plan minimises a random mix ``lam * v/mean(v) + (1 - lam) * u`` of the table's
    normalised values ``v`` and uniform noise ``u`` under its budget (greedy MCKP), with
    ``lam ~ U(0, 1)``: from nearly random to nearly optimal plans, all inside the budget.
    """
    from .solvers._mckp import greedy_choice
    from .solvers.base import make_solution

    if n_plans < 2:
        raise ValueError(f"`n_plans` must be >= 2 to rank plans, got {n_plans}")
    rng = np.random.default_rng(seed)
    plans: list[Solution] = []
    for k in range(n_plans):
        budget = Budget.avg_bits(float(budgets[k % len(budgets)]))
        base = Problem.build(table, budget)
        if base.min_cost() > base.capacity:
            raise ValueError(f"budget {budget.describe()} is below this space's minimum")
        finite = np.isfinite(base.values)
        scale = float(np.mean(base.values[finite])) or 1.0
        lam = rng.uniform()
        noise = rng.uniform(size=base.values.shape)
        mixed = np.where(finite, lam * base.values / scale + (1 - lam) * noise, np.inf)
        problem = Problem(
            values=mixed,
            costs=base.costs,
            members=base.members,
            capacity=base.capacity,
            n_units=base.n_units,
        )
        choice = greedy_choice(problem)
        sol = make_solution(
            base,
            table,
            budget,
            choice,
            Status.FEASIBLE,
            {"validation_plan": k, "lambda": lam, "budget": budget.to_dict()},
        )
        plans.append(sol)
    return plans


def validate_estimator(
    model: nn.Module,
    table: SensitivityTable,
    windows: torch.Tensor,
    *,
    budgets: Sequence[float] = (2.75, 3.25, 3.75),
    n_plans: int = 32,
    seed: int = 0,
    chunk: int = 4,
    correct: int = 0,
    callback: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Measure ``n_plans`` random plans and rank-correlate predicted vs measured loss.

    Plans are applied (RTN) to copies of the model, ``chunk`` at a time, so the reference
    forward pass is shared by a chunk; ``model`` itself is never modified. ``correct=K``
    (0 or >= 4) also fits the measured correction to K other random plans and ranks the
    validation plans by the corrected table (:attr:`ValidationReport.corrected`).
    """
    from scipy.stats import kendalltau, spearmanr

    if isinstance(correct, bool) or not isinstance(correct, int) or correct < 0:
        raise ValueError(f"`correct` must be an int >= 0, got {correct!r}")
    if 0 < correct < 4:
        raise ValueError(f"`correct` needs >= 4 fitting plans (or 0 for none), got {correct}")
    started = time.perf_counter()
    plans = random_plans(table, budgets, n_plans, seed=seed)
    fitting = random_plans(table, budgets, correct, seed=seed + 1) if correct else []
    total = len(plans) + len(fitting)

    def progress(done: int, _: int) -> None:
        if callback is not None:
            callback(done, total)

    measured = _measure(model, [*plans, *fitting], windows, chunk, progress)
    scores = [
        PlanScore(
            budget_bits=float(plan.meta.get("budget", {}).get("value", float("nan"))),
            avg_bits=plan.avg_bits,
            predicted=plan.objective,
            kl=kl,
            ppl=ppl,
        )
        for plan, (kl, ppl) in zip(plans, measured)
    ]
    pred = [p.predicted for p in scores]
    kls = [p.kl for p in scores]
    corrected = None
    if fitting:
        from .search.correction import fit_correction

        fit = fit_correction(table, fitting, [kl for kl, _ in measured[len(plans) :]])
        better = [float(v) for v in fit.predict(table, plans)]
        corrected = CorrectedRanks(
            spearman=float(spearmanr(better, kls).statistic),
            kendall=float(kendalltau(better, kls).statistic),
            spearman_within=_within(scores, better),
            fit_plans=len(fitting),
            correction=fit.to_dict(),
        )
    return ValidationReport(
        estimator=table.estimator,
        spearman=float(spearmanr(pred, kls).statistic),
        kendall=float(kendalltau(pred, kls).statistic),
        spearman_ppl=float(spearmanr(pred, [p.ppl for p in scores]).statistic),
        kendall_ppl=float(kendalltau(pred, [p.ppl for p in scores]).statistic),
        spearman_within=_within(scores, pred),
        plans=tuple(scores),
        time_s=round(time.perf_counter() - started, 2),
        corrected=corrected,
    )


def _measure(
    model: nn.Module,
    plans: Sequence[Solution],
    windows: torch.Tensor,
    chunk: int,
    callback: Callable[[int, int], None],
) -> list[tuple[float, float]]:
    """(KL, ppl) of every plan applied with RTN to a copy of ``model``, ``chunk`` at a time."""
    import copy

    from .data import evaluate_lm
    from .search.api import apply

    out: list[tuple[float, float]] = []
    for first in range(0, len(plans), chunk):
        batch = plans[first : first + chunk]
        copies = {}
        for i, plan in enumerate(batch):
            copies[str(i)] = copy.deepcopy(model)
            apply(copies[str(i)], plan, "rtn")  # the copy is discarded: no restore needed
        scores = evaluate_lm(model, copies, windows)
        del copies
        out += [(scores[str(i)].kl, scores[str(i)].ppl) for i in range(len(batch))]
        callback(len(out), len(plans))
    return out


def _within(scores: Sequence[PlanScore], predicted: Sequence[float]) -> float:
    """Mean over budgets of Spearman(predicted, KL) among the plans of one budget (3+)."""
    from scipy.stats import spearmanr

    within = []
    for b in sorted({p.budget_bits for p in scores}):
        idx = [i for i, p in enumerate(scores) if p.budget_bits == b]
        if len(idx) >= 3:
            rho = spearmanr([predicted[i] for i in idx], [scores[i].kl for i in idx]).statistic
            within.append(rho)
    return float(np.nanmean(within)) if within else float("nan")
