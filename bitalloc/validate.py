"""Validate an estimator: does its predicted loss rank real plans like their measured loss?

Random feasible plans are drawn at several budgets, each plan's predicted loss (the sum of
its table entries, the solvers' additivity assumption) is compared with its measured KL to
the reference model on held-out windows, and the agreement is reported as Spearman's rho and
Kendall's tau (scipy.stats). No anchor system reports this; it is what tells whether a solver
optimising the table optimises the model.
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plans"] = [asdict(p) for p in self.plans]
        return d


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
    callback: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Measure ``n_plans`` random plans and rank-correlate predicted vs measured loss.

    Plans are applied (RTN) to copies of the model, ``chunk`` at a time, so the reference
    forward pass is shared by a chunk; ``model`` itself is never modified.
    """
    import copy

    from scipy.stats import kendalltau, spearmanr

    from .data import evaluate_lm
    from .search.api import apply

    started = time.perf_counter()
    plans = random_plans(table, budgets, n_plans, seed=seed)
    scores: list[PlanScore] = []
    for first in range(0, len(plans), chunk):
        batch = plans[first : first + chunk]
        copies = {}
        for i, plan in enumerate(batch):
            copies[str(i)] = copy.deepcopy(model)
            apply(copies[str(i)], plan, "rtn")  # the copy is discarded: no restore needed
        measured = evaluate_lm(model, copies, windows)
        del copies
        for i, plan in enumerate(batch):
            s = measured[str(i)]
            budget = plan.meta.get("budget", {}).get("value", float("nan"))
            scores.append(
                PlanScore(
                    budget_bits=float(budget),
                    avg_bits=plan.avg_bits,
                    predicted=plan.objective,
                    kl=s.kl,
                    ppl=s.ppl,
                )
            )
        if callback is not None:
            callback(len(scores), len(plans))
    pred = [p.predicted for p in scores]
    rho = spearmanr(pred, [p.kl for p in scores]).statistic
    tau = kendalltau(pred, [p.kl for p in scores]).statistic
    rho_p = spearmanr(pred, [p.ppl for p in scores]).statistic
    tau_p = kendalltau(pred, [p.ppl for p in scores]).statistic
    within = []
    for b in sorted({p.budget_bits for p in scores}):
        same = [p for p in scores if p.budget_bits == b]
        if len(same) >= 3:
            within.append(spearmanr([p.predicted for p in same], [p.kl for p in same]).statistic)
    return ValidationReport(
        estimator=table.estimator,
        spearman=float(rho),
        kendall=float(tau),
        spearman_ppl=float(rho_p),
        kendall_ppl=float(tau_p),
        spearman_within=float(np.nanmean(within)) if within else float("nan"),
        plans=tuple(scores),
        time_s=round(time.perf_counter() - started, 2),
    )
