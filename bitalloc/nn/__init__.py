"""Torch helpers that know no search types beyond module names: forward hooks that collect
input statistics over calibration batches (``stats``), and weight checks (``checks``)."""

from __future__ import annotations

from .checks import check_finite_weights, nonfinite_weights
from .stats import MIN_TOKENS, InputMoments, input_moments

__all__ = [
    "MIN_TOKENS",
    "InputMoments",
    "check_finite_weights",
    "input_moments",
    "nonfinite_weights",
]
