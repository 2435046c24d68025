"""bitalloc: mixed-precision search and optimization for neural networks.

    import bitalloc as ba
    model, tok = ba.models.load("smollm2-135m")
    calib = ba.data.calibration(tok, n_samples=16, seq_len=512)
    sol = ba.search(model, calib, ba.Budget.avg_bits(3.0))   # the default pipeline

``import bitalloc`` is light: torch, transformers and the solvers load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Budget": "bitalloc.search.budget",
    "BudgetKind": "bitalloc.search.budget",
    "LinearConstraint": "bitalloc.search.budget",
    "Calibration": "bitalloc.search.calibration",
    "QuantFormat": "bitalloc.search.formats",
    "SearchSpace": "bitalloc.search.space",
    "Unit": "bitalloc.search.space",
    "SensitivityTable": "bitalloc.search.table",
    "Solution": "bitalloc.search.solution",
    "Frontier": "bitalloc.search.frontier",
    "Status": "bitalloc.search.solution",
    "DEFAULT_FORMATS": "bitalloc.search.oneshot",
    "available": "bitalloc.search.api",
    "estimate": "bitalloc.search.api",
    "solve": "bitalloc.search.api",
    "frontier": "bitalloc.search.api",
    "apply": "bitalloc.search.api",
    "export": "bitalloc.search.api",
}
_SUBMODULES = ("models", "data", "sensitivity", "solvers", "backends", "kernels", "search")

__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"bitalloc.{name}")
    raise AttributeError(f"module 'bitalloc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
