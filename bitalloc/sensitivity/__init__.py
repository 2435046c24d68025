"""Sensitivity estimators: predicted loss increase of every (unit, format) pair.

Registered names: ``weight_error`` and ``zd`` (data-free); ``layer_error``, ``lim`` and
``kl_probe`` (forward passes over calibration data); ``fisher``, ``output_fisher`` and
``hessian_trace`` (gradients; ``hessian_trace`` needs double backward, i.e. eager attention).
"""

from ..search.registry import Registry
from .base import Estimator

ESTIMATORS: Registry[Estimator] = Registry(
    "estimator", Estimator, " (subclass bitalloc.sensitivity.base.EstimatorBase)"
)

from .fisher import FisherEstimator  # noqa: E402
from .hessian_trace import HessianTraceEstimator  # noqa: E402
from .kl_probe import KlProbeEstimator  # noqa: E402
from .layer_error import LayerErrorEstimator  # noqa: E402  (registers itself)
from .lim import LimEstimator  # noqa: E402
from .output_fisher import OutputFisherEstimator  # noqa: E402
from .weight_error import WeightErrorEstimator  # noqa: E402
from .zd import ZdEstimator  # noqa: E402

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "FisherEstimator",
    "HessianTraceEstimator",
    "KlProbeEstimator",
    "LayerErrorEstimator",
    "LimEstimator",
    "OutputFisherEstimator",
    "WeightErrorEstimator",
    "ZdEstimator",
]
