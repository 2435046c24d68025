"""OWL baseline: outlier-weighted layerwise sparsity (Yin et al., ICML 2024, arXiv 2310.05175).

OWL gives layers with more activation outliers less sparsity. With ``LOD_i`` the outlier ratio
of unit ``i`` (:func:`bitalloc.sensitivity.outliers.outlier_ratios`: fraction of Wanda scores
``|W|*||X||`` above ``M`` times their mean, pooled per decoder block) and the target
sparsity ``S``:

    d_i = 2*lambda * (LOD_i - min LOD) / (max LOD - min LOD)    (min-max to [0, 2*lambda])
    d_i <- d_i - mean_w(d)                                      (numel-weighted mean: 0)
    S_i = S - d_i  in [S - lambda, S + lambda], weighted mean exactly S

Each unit then takes the sparse level of the space (one dense grid, the ``base`` format, at
several unstructured sparsities) nearest to ``S_i``. Memory falls monotonically as ``S``
rises, so ``S`` is found by bisection: the densest such plan within the budget. Without
sparse formats in the space the same rule runs on the bit compression ``1 - bpw/16`` of
every allowed format (outlier-weighted bit allocation). The table's values are ignored
except to report the plan's predicted loss. numpy only; the ratios come from
``table.meta["outlier_ratios"]`` or the ``outlier_ratios`` option (none: no deviation,
a uniform target, with a logged warning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.formats import QuantFormat
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.space import SearchSpace
from ..search.table import SensitivityTable
from . import SOLVERS
from .base import SolverBase, infeasible, make_solution, provenance, start

OUTLIER_KEY = "outlier_ratios"
log = logging.getLogger(__name__)


@SOLVERS.register("owl")
@dataclass(frozen=True)
class OwlSolver(SolverBase):
    """Non-uniform sparsity from outlier ratios (OWL), fitted to the memory budget.

    Args:
        lamda: half-width ``lambda`` of the sparsity range around the target (OWL ``Lamda``,
            0.08).
        base: the dense format whose sparse variants are the levels (e.g. ``"int4-g64"``,
            ``"bf16"``); ``None`` = the only base with unstructured sparse formats in the space.
        outlier_ratios: one ratio per unit; ``None`` = ``table.meta["outlier_ratios"]``.
        iters: bisection steps on the target sparsity.

    Example:
        >>> table = with_outlier_ratios(table, outlier_ratios(model, space, calib))
        >>> OwlSolver().solve(table, Budget.avg_bits(2.0)).histogram()
    """

    lamda: float = 0.08
    base: str | None = None
    outlier_ratios: tuple[float, ...] | None = None
    iters: int = 60

    name: ClassVar[str]

    def __post_init__(self) -> None:
        if not 0.0 <= self.lamda < 0.5:
            raise ValueError(f"`lamda` must be in [0, 0.5), got {self.lamda!r}")
        if not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"`iters` must be a positive int, got {self.iters!r}")

    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """The OWL plan with the most bytes that fits ``budget`` (INFEASIBLE if none does)."""
        problem, started, early = start(self, table, budget)
        if early is not None:
            return early
        space = table.space
        meta = provenance(self, table, budget, started)
        value, what = self._levels(problem, space)  # [G, F], nan = not a level
        numel = np.array([u.numel for u in space.units], dtype=np.float64)
        dev = _deviation(self._ratios(table), numel, self.lamda)
        group_dev = np.array([dev[list(m)].mean() for m in problem.members])
        ok = problem.allowed & np.isfinite(value)
        if not ok.any(axis=1).all():
            name = space.units[problem.members[int(np.argmin(ok.any(axis=1)))][0]].name
            msg = f"unit {name!r} allows none of the OWL levels ({what})"
            return infeasible(problem, table, budget, meta, msg)
        level = np.where(ok, value, np.nan)

        def choose(target: float) -> np.ndarray:
            dist = np.abs(level - (target - group_dev)[:, None]) - 1e-12 * level  # ties: sparser
            return np.argmin(np.where(ok, dist, np.inf), axis=1)

        lo, hi = float(np.nanmin(level)) - self.lamda, float(np.nanmax(level)) + self.lamda
        if not problem.fits(choose(hi)):
            avg = problem.total(choose(hi))[1] / space.numel
            msg = f"the most compressed OWL plan ({avg:.6g} avg bits) breaks the budget"
            return infeasible(problem, table, budget, meta, msg)
        if problem.fits(choose(lo)):
            hi = lo
        for _ in range(self.iters if hi > lo else 0):  # choose(hi) fits, choose(lo) does not
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if problem.fits(choose(mid)) else (mid, hi)
        choice = choose(hi)
        picked = level[np.arange(problem.n_groups), choice]
        msg = (
            f"owl: target {what} {hi:.4f}, per unit {picked.min():.4g}..{picked.max():.4g} "
            f"(lambda {self.lamda})"
        )
        return make_solution(problem, table, budget, choice, Status.FEASIBLE, meta, message=msg)

    def _levels(self, problem: Problem, space: SearchSpace) -> tuple[np.ndarray, str]:
        """Level value of every (group, format): the sparsity of the ``base`` format's
        unstructured variants, or (no sparse formats in the space) the bit compression
        ``1 - bits_per_weight / 16`` of every format; nan where a format is not a level."""
        formats = space.formats
        bases = sorted({f.dense.key for f in formats if f.is_sparse and f.n_m is None})
        if self.base is None and not bases:
            numel = np.array([sum(space.units[i].numel for i in m) for m in problem.members])
            return 1.0 - problem.costs / (16.0 * numel[:, None]), "compression"
        if self.base is None and len(bases) > 1:
            raise ValueError(
                "`base` must name the dense format whose sparse variants OWL chooses between; "
                f"unstructured sparse bases in the space: {bases}"
            )
        key = QuantFormat.parse(self.base or bases[0]).key
        row = np.array(
            [f.sparsity if f.dense.key == key and f.n_m is None else np.nan for f in formats]
        )
        if not any(f.is_sparse and f.dense.key == key and f.n_m is None for f in formats):
            raise ValueError(f"`base` {key!r} has no unstructured sparse formats in the space")
        return np.broadcast_to(row, problem.costs.shape).copy(), "sparsity"

    def _ratios(self, table: SensitivityTable) -> np.ndarray:
        raw = (
            self.outlier_ratios if self.outlier_ratios is not None else table.meta.get(OUTLIER_KEY)
        )
        if raw is None:
            log.warning(
                "owl: no outlier ratios (pass `outlier_ratios`, or a table from "
                "bitalloc.sensitivity.outliers.with_outlier_ratios); every unit gets the target"
            )
            return np.zeros(len(table.space))
        r = np.asarray(raw, dtype=np.float64).reshape(-1)
        if r.shape != (len(table.space),) or not np.isfinite(r).all():
            raise ValueError(
                f"`outlier_ratios` must hold {len(table.space)} finite values, got {r.shape}"
            )
        return r


def _deviation(ratios: np.ndarray, numel: np.ndarray, lamda: float) -> np.ndarray:
    """OWL's density offsets: min-max scale to ``[0, 2*lamda]``, minus the weighted mean."""
    span = ratios.max() - ratios.min()
    if span <= 0:
        return np.zeros_like(ratios)
    d = (ratios - ratios.min()) / span * (2 * lamda)
    return d - np.average(d, weights=numel)
