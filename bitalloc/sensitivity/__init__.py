"""Sensitivity estimators: predicted loss increase of every (unit, format) pair.

Registered names: ``weight_error`` (data-free) and ``layer_error`` (calibration activations).
"""

from ..search.registry import Registry
from .base import Estimator

ESTIMATORS: Registry[Estimator] = Registry("estimator")

from .layer_error import LayerErrorEstimator  # noqa: E402  (registers itself)
from .weight_error import WeightErrorEstimator  # noqa: E402

__all__ = ["ESTIMATORS", "Estimator", "LayerErrorEstimator", "WeightErrorEstimator"]
