"""Data-free weight error: ``cost(l, f) = ||Q_f(W_l) - W_l||_F^2 / ||W_l||_F^2``.

The baseline every data-aware estimator must beat (it is the HAWQ-V2 score with a unit
Hessian trace; Dong et al., NeurIPS 2020, eq. 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..search.table import SensitivityTable
from . import ESTIMATORS
from .base import Cell, EstimatorBase, Progress, Scoring

if TYPE_CHECKING:
    from torch import nn


@ESTIMATORS.register("weight_error")
@dataclass(frozen=True, slots=True)
class WeightErrorEstimator(EstimatorBase):
    """Squared Frobenius norm of the round-to-nearest weight perturbation.

    Args:
        normalize: divide by ``||W||_F^2`` (relative error; default) instead of the raw sum.
    """

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    normalize: bool = True

    def score_table(
        self, run: Scoring, model: nn.Module, callback: Progress | None
    ) -> SensitivityTable:
        def score(c: Cell) -> float:
            # relative to the whole layer so that channel slices add up to the layer's cost
            full = c.module.weight.detach().float()
            denom = float(full.pow(2).sum()) if self.normalize else 1.0
            return float(c.delta.pow(2).sum()) / max(denom, 1e-30)

        return run.table(run.per_format(score, callback=callback, description="weight error"))
