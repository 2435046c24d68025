"""Data-free weight error: ``cost(l, f) = ||Q_f(W_l) - W_l||_F^2 / ||W_l||_F^2``.

The baseline every data-aware estimator must beat (it is the HAWQ-V2 score with a unit
Hessian trace; Dong et al., NeurIPS 2020, eq. 2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..search.table import SensitivityTable
from . import ESTIMATORS
from .base import Deltas, Progress, backend_meta, options, unit_modules

if TYPE_CHECKING:
    from torch import nn

    from ..search.calibration import Calibration
    from ..search.space import SearchSpace


@ESTIMATORS.register("weight_error")
@dataclass(frozen=True, slots=True)
class WeightErrorEstimator:
    """Squared Frobenius norm of the round-to-nearest weight perturbation.

    Args:
        normalize: divide by ``||W||_F^2`` (relative error; default) instead of the raw sum.
    """

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    normalize: bool = True

    def estimate(
        self,
        model: nn.Module,
        space: SearchSpace,
        calib: Calibration | None = None,
        *,
        backend: Any = None,
        callback: Progress | None = None,
    ) -> SensitivityTable:
        started = time.perf_counter()
        modules = unit_modules(model, space)
        deltas = Deltas(model, space, calib, backend)
        values = np.full((len(space), len(space.formats)), np.inf)
        mask = space.mask
        for i, u in enumerate(space.units):
            # relative to the whole layer so that channel slices add up to the layer's cost
            full = modules[u.name].weight.detach().float()
            denom = float(full.pow(2).sum()) if self.normalize else 1.0
            for j in range(len(space.formats)):
                if mask[i, j]:
                    values[i, j] = float(deltas(i, j).pow(2).sum()) / max(denom, 1e-30)
            if callback is not None:
                callback(i + 1, len(space), "weight error")
        meta = {
            "options": options(self),
            "backend": backend_meta(deltas),
            "time_s": round(time.perf_counter() - started, 3),
        }
        return SensitivityTable(space=space, values=values, estimator=self.name, meta=meta)
