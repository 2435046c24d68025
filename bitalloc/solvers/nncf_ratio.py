"""Anchor baseline: NNCF's two-precision sort-and-fill to a weight ratio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from . import SOLVERS
from ._two_precision import (
    Split,
    check_optional_key,
    need,
    two_precision_start,
)
from .base import SolverBase, infeasible, make_solution


@SOLVERS.register("nncf_ratio")
@dataclass(frozen=True)
class NncfRatioSolver(SolverBase):
    """NNCF ``compress_weights(ratio=...)``: least sensitive layers to the primary (low)
    precision until a share ``ratio`` of the weights is reached, the rest to the backup (high).

    The rule mirrored is ``MixedPrecisionCriterion.apply`` (openvinotoolkit/nncf
    src/nncf/quantization/algorithms/weight_compression/mixed_precision.py; anchors.md section
    2a): with per-layer scores ``s``, visit layers in ascending ``s`` (Python's stable sort)
    and move each to primary while ``(W_primary + w) / W_all < ratio``; stop at the first
    layer for which the share would reach ``ratio`` (``current_ratio >= ratio: break``).
    ``W_all`` counts the ratio-defining weights only; ``ratio >= 1`` puts every one in primary
    (NNCF runs the criterion only when ``ratio < 1``).

    Score: NNCF's criteria all rank by quantization noise of the weights (WEIGHT_QUANTIZATION_
    ERROR: ``1 / (max_rows mean (Q8(W) - W)^2 + eps)``, data-free; HESSIAN_INPUT_ACTIVATION:
    ``||Q8(W) - W||_F * mean trace(2 X^T X)``; the activation criteria: an input-activation
    statistic x the inverse INT8 error). A table already holds predicted loss, so we mirror
    the Hessian-weighted noise criterion's meaning -- loss increase caused by lowering the
    layer -- as the per-weight table difference ``s_g = (V[g, low] - V[g, high]) / N_g``
    (a tie group's values are summed over its members, ``N_g`` its weight count). The
    data-free inverse-INT8-error score needs the weights themselves and is not reproduced.

    Groups that cannot take both formats are not ratio-defining and take the closest allowed
    format to ``low`` (:mod:`._two_precision`). ``ratio=None`` (our budget fit): the smallest ratio
    whose plan fits, i.e. the largest share of high-precision weights along NNCF's order; its
    NNCF-equivalent ratio is reported. An explicit ``ratio`` whose plan exceeds the budget
    gives INFEASIBLE (with the smallest ratio that fits). ``low``/``high`` default to the
    formats bracketing the budget: ``low`` the widest format whose all-low plan fits,
    ``high`` the next wider one. Status FEASIBLE.

    Args:
        ratio: share of the ratio-defining weights in ``low`` (NNCF ``ratio``), in [0, 1];
            ``None`` = the smallest that fits the budget.
        low: primary (narrow) format key; ``None`` = bracket the budget.
        high: backup (wide) format key; ``None`` = the next wider format than ``low``.

    Example:
        >>> NncfRatioSolver(ratio=0.8, low="int4-g64", high="int8-g64").solve(table, budget)
    """

    ratio: float | None = None
    low: str | None = None
    high: str | None = None

    name: ClassVar[str]

    def __post_init__(self) -> None:
        r = self.ratio
        if r is not None and (
            isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1
        ):
            raise ValueError(f"`ratio` must be a number in [0, 1] or None, got {r!r}")
        check_optional_key(self.low, "low")
        check_optional_key(self.high, "high")

    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """NNCF's plan at ``ratio`` (or the smallest fitting ratio) under ``budget``."""
        problem, split, meta, early = two_precision_start(self, table, budget, "nncf ratio")
        if early is not None:
            return early
        assert split is not None
        space = table.space
        order = np.argsort(split.score, kind="stable")  # ascending sensitivity
        cum = np.cumsum(split.weights[order])
        total = float(cum[-1]) if len(cum) else 0.0
        if self.ratio is None:
            n_low = _smallest_fitting(problem, split, order)
        else:
            n_low = _nncf_cut(cum, total, float(self.ratio))
            plan = split.choice(_raise_mask(order, n_low))
            if not problem.fits(plan):
                best = _smallest_fitting(problem, split, order)
                msg = (
                    f"ratio {self.ratio:g} needs {need(problem, budget, space, plan)}, above the "
                    f"budget {budget.describe()}; the smallest ratio that fits is "
                    f"{_equivalent_ratio(cum, total, best):.6g}"
                )
                return infeasible(problem, table, budget, meta, message=msg)
        choice = split.choice(_raise_mask(order, n_low))
        share = float(cum[n_low - 1]) / total if n_low and total else 0.0
        n_high = len(order) - n_low
        rule: dict[str, Any] = {
            "name": "nncf MixedPrecisionCriterion.apply",
            "criterion": "per-weight table difference (V_low - V_high) / N",
            "low": space.keys[split.low],
            "high": space.keys[split.high] if split.high is not None else None,
            "ratio": self.ratio,
            "ratio_equivalent": _equivalent_ratio(cum, total, n_low),
            "low_share": share,
            "high_groups": n_high,
            "ratio_defining_groups": len(order),
        }
        meta["rule"] = rule
        if split.high is None:
            msg = f"uniform {space.keys[split.low]}: no wider format to mix with"
        else:
            msg = (
                f"NNCF ratio rule: {space.keys[split.low]} on {100 * share:.2f}% of the "
                f"ratio-defining weights, {space.keys[split.high]} on the {n_high} most "
                "sensitive groups"
            )
        return make_solution(problem, table, budget, choice, Status.FEASIBLE, meta, msg)


def _nncf_cut(cum: np.ndarray, total: float, ratio: float) -> int:
    """Number of layers NNCF's loop puts in primary precision (ascending-score prefix)."""
    if ratio >= 1 or total == 0:
        return len(cum)
    n = 0
    for c in cum:  # current_ratio = (W_primary + w) / W_all; break when >= ratio
        if float(c) / total >= ratio:
            break
        n += 1
    return n


def _raise_mask(order: np.ndarray, n_low: int) -> np.ndarray:
    """Mask over ``split.part``: True for the groups after the first ``n_low`` in ``order``."""
    mask = np.ones(len(order), dtype=bool)
    mask[order[:n_low]] = False
    return mask


def _smallest_fitting(problem: Problem, split: Split, order: np.ndarray) -> int:
    """Smallest primary prefix whose plan fits (the all-low plan, n = len, always fits)."""
    base_cost = problem.total(split.base)[1]
    dcost = split.dcost[order]
    suffix = np.concatenate([np.cumsum(dcost[::-1])[::-1], [0.0]])  # suffix[n] = raise order[n:]
    for n in np.flatnonzero(base_cost + suffix <= problem.capacity):
        if problem.fits(split.choice(_raise_mask(order, int(n)))):
            return int(n)
    return len(order)


def _equivalent_ratio(cum: np.ndarray, total: float, n_low: int) -> float:
    """A ``ratio`` for which NNCF's loop keeps exactly ``n_low`` layers in primary."""
    if n_low >= len(cum) or total == 0:
        return 1.0
    return float(cum[n_low]) / total  # the loop breaks exactly at layer n_low
