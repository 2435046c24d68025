"""Anchor baseline: mlx-lm's dynamic-quant threshold bisection over sensitivities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from . import SOLVERS
from ._two_precision import check_optional_key, two_precision_start
from .base import SolverBase, make_solution


@SOLVERS.register("mlx_threshold")
@dataclass(frozen=True)
class MlxThresholdSolver(SolverBase):
    """mlx-lm ``dynamic_quant``: layers whose sensitivity exceeds a bisected threshold get the
    high precision, all others the low one, at the largest high share that fits the budget.

    The original (ml-explore/mlx-lm mlx_lm/quant/dynamic_quant.py; anchors.md section 8):
    ``estimate_sensitivities`` scores each quantizable layer by
    ``s = sum(dKL/dW_low * (Q_low(W) - Q_high(W))) / (numel / 1e6)`` -- a first-order estimate
    of the loss increase of storing the layer low rather than high, per weight -- and
    ``estimate_threshold`` bisects ``t`` between ``min(s)`` and ``max(s)``: quantize with
    ``high`` where ``s > t``, ``low`` elsewhere; if the model's bits per weight exceed
    ``--target-bpw`` raise ``t`` else lower it, until the bracket is below 1e-3 of the range;
    it then returns the bracket's midpoint.

    Here the score is the table's analogue of that estimate,
    ``s_g = (V[g, low] - V[g, high]) / N_g`` (a tie group's values summed over its members,
    ``N_g`` its weight count), and the same monotone predicate "raise every group with
    ``s > t``" is bisected. Because the plan only changes when ``t`` crosses a score, the
    bisection runs over the thresholds {-inf} U {distinct scores} (at most ``iterations``
    halvings; exact when ``2**iterations`` exceeds the number of scores), always keeping the
    fitting end. Deviations from mlx-lm, both so that the budget holds exactly: the result is
    the smallest fitting threshold rather than the midpoint of a 1e-3 bracket (which can land
    on the over-budget side), and ``t = -inf`` (every group high) is allowed.

    Groups that cannot take both formats take the closest allowed format to ``low``
    (:mod:`._two_precision`). ``low``/``high`` default to the formats bracketing the budget
    (``low`` the widest whose all-low plan fits, ``high`` the next wider). Status FEASIBLE
    (LIMIT when ``iterations`` ran out before the bracket closed; the plan still fits).

    Args:
        low: low-precision format key; ``None`` = bracket the budget.
        high: high-precision format key; ``None`` = the next wider format than ``low``.
        iterations: maximum bisection steps.

    Example:
        >>> MlxThresholdSolver(low="int4-g64", high="int8-g64").solve(table, budget)
    """

    low: str | None = None
    high: str | None = None
    iterations: int = 60

    name: ClassVar[str]

    def __post_init__(self) -> None:
        check_optional_key(self.low, "low")
        check_optional_key(self.high, "high")
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, int) or it < 1:
            raise ValueError(f"`iterations` must be a positive int, got {it!r}")

    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """The plan at the smallest fitting sensitivity threshold under ``budget``."""
        problem, split, meta, early = two_precision_start(self, table, budget, "mlx-lm threshold")
        if early is not None:
            return early
        assert split is not None
        space = table.space
        thresholds = np.concatenate([[-np.inf], np.unique(split.score)])

        def fits(k: int) -> bool:
            return problem.fits(split.choice(split.score > thresholds[k]))

        lo, hi = -1, len(thresholds) - 1  # hi fits (nothing raised); lo is "below -inf"
        steps = 0
        while hi - lo > 1 and steps < self.iterations:
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid
            steps += 1
        limited = hi - lo > 1
        t = float(thresholds[hi])
        raised = split.score > t
        choice = split.choice(raised)
        rule: dict[str, Any] = {
            "name": "mlx-lm dynamic_quant estimate_threshold",
            "criterion": "per-weight table difference (V_low - V_high) / N",
            "low": space.keys[split.low],
            "high": space.keys[split.high] if split.high is not None else None,
            "threshold": None if np.isinf(t) else t,
            "bisection_steps": steps,
            "high_groups": int(raised.sum()),
        }
        meta["rule"] = rule
        if split.high is None:
            msg = f"uniform {space.keys[split.low]}: no wider format to mix with"
        else:
            shown = "-inf" if np.isinf(t) else f"{t:.6g}"
            msg = (
                f"mlx-lm threshold rule: {space.keys[split.high]} where sensitivity > {shown} "
                f"({int(raised.sum())} groups), {space.keys[split.low]} elsewhere"
            )
            if limited:
                msg += f"; stopped after {steps} bisection steps"
        status = Status.LIMIT if limited else Status.FEASIBLE
        return make_solution(problem, table, budget, choice, status, meta, msg)
