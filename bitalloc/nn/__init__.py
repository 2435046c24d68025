"""Torch helpers that know no search types beyond module and unit names: mode scopes
(``modes``), input Hessians (``hessians``) and input moments (``stats``) from forward hooks,
repeated-block discovery (``blocks``), unit modules and weight views (``units``), reference
logits and per-position KL rows (``logits``), and weight checks (``checks``)."""

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
