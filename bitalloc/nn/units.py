"""Modules and weight views of named units: a unit is anything with a ``name``, the ``fqn`` of
its module, a weight ``shape`` and optional output ``channels`` ``(start, stop)`` (the search
space's :class:`~bitalloc.search.space.Unit` is one)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn


class UnitLike(Protocol):
    """What these helpers read from a unit."""

    @property
    def name(self) -> str: ...
    @property
    def fqn(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def channels(self) -> tuple[int, int] | None: ...


def unit_weight(module: nn.Module, unit: UnitLike) -> torch.Tensor:
    """The unit's weight: the module's weight, or its rows ``unit.channels`` (a view)."""
    w = module.weight
    if unit.channels is None:
        return w
    start, stop = unit.channels
    return w[start:stop]


def unit_modules(model: nn.Module, units: Iterable[UnitLike]) -> dict[str, nn.Module]:
    """Map unit names to their modules (``unit.fqn``), checking the weight shapes match.

    Several channel-slice units of one layer map to the same module; slice its weight with
    :func:`unit_weight`.
    """
    modules = dict(model.named_modules())
    out = {}
    for u in units:
        mod = modules.get(u.fqn)
        weight = getattr(mod, "weight", None)
        if mod is None or weight is None:
            raise ValueError(f"unit {u.name!r} of the search space is not a module with a weight")
        if tuple(unit_weight(mod, u).shape) != u.shape:
            raise ValueError(
                f"unit {u.name!r}: model weight shape {tuple(weight.shape)} != space "
                f"shape {u.shape}"
            )
        out[u.name] = mod
    return out
