"""Checks of a model's weights before anything is measured or quantized."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def nonfinite_weights(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The modules among ``names`` (FQNs, each listed once, sorted) whose ``weight`` holds a
    NaN or an infinity; names the model lacks are skipped."""
    import torch

    modules = dict(model.named_modules())
    bad = set()
    for name in set(names):
        w = getattr(modules.get(name), "weight", None)
        if isinstance(w, torch.Tensor) and not bool(torch.isfinite(w).all()):
            bad.add(name)
    return sorted(bad)


def check_finite_weights(model: nn.Module, names: Iterable[str], why: str) -> None:
    """ValueError naming (up to five of) the modules with non-finite weights, and ``why``
    that makes them fatal."""
    bad = nonfinite_weights(model, names)
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(
            "non-finite (NaN/inf) weights in " + ", ".join(map(repr, bad[:5])) + more + f": {why}"
        )
