"""Torch helpers that know no search types beyond module names: forward hooks that collect
input statistics over calibration batches (``stats``)."""

from __future__ import annotations

from .stats import MIN_TOKENS, InputMoments, input_moments

__all__ = ["MIN_TOKENS", "InputMoments", "input_moments"]
