"""The Estimator protocol and helpers shared by estimators.

``Estimator.estimate(model, space, calib) -> SensitivityTable``: ``values[i, j]`` predicts the
loss increase when unit ``i`` alone is stored in format ``j``; solvers assume the increases add
up over units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ..search.formats import QuantFormat

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..search.calibration import Calibration
    from ..search.space import SearchSpace, Unit
    from ..search.table import SensitivityTable

Progress = Callable[[int, int, str], None]
"""``callback(done, total, description)`` for progress reporting."""


@runtime_checkable
class Estimator(Protocol):
    """Scores every allowed (unit, format) pair of a search space."""

    name: ClassVar[str]
    needs_calibration: ClassVar[bool]

    def estimate(
        self,
        model: nn.Module,
        space: SearchSpace,
        calib: Calibration | None,
        *,
        callback: Progress | None = None,
    ) -> SensitivityTable: ...


def unit_modules(model: nn.Module, space: SearchSpace) -> dict[str, nn.Module]:
    """Map unit names to their modules (``unit.fqn``), checking the shapes match the space.

    Several channel-slice units of one layer map to the same module; slice its weight with
    :func:`unit_weight`.
    """
    modules = dict(model.named_modules())
    out = {}
    for u in space.units:
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


def unit_weight(module: nn.Module, unit: Unit) -> torch.Tensor:
    """The unit's weight: the module's weight, or its rows ``unit.channels`` (a view)."""
    w = module.weight
    if unit.channels is None:
        return w
    start, stop = unit.channels
    return w[start:stop]


def weight_delta(w: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """``Q(W) - W`` in float32 for format ``fmt`` (round-to-nearest reference quantizer;
    sparse formats prune by magnitude first, so ``Q`` zeroes the pruned weights)."""
    from ..kernels.sparsity import fake_quantize_sparse

    wf = w.detach().float()
    q = fake_quantize_sparse(
        wf, fmt.bits, fmt.group_size, fmt.symmetric, fmt.float_kind, fmt.sparsity, fmt.n_m
    )
    return q - wf


def options(estimator: Any) -> dict[str, Any]:
    """The estimator's options (its dataclass fields)."""
    return dataclasses.asdict(estimator) if dataclasses.is_dataclass(estimator) else {}


def require_calibration(calib: Calibration | None, estimator: str) -> Calibration:
    """``calib``, or a ValueError naming the estimator that needs it."""
    if calib is None:
        raise ValueError(f"`calib` is required for the {estimator} estimator")
    return calib


def require_linear(modules: dict[str, nn.Module], estimator: str, alternative: str) -> None:
    """Refuse non-``nn.Linear`` units for estimators that read ``x @ W^T`` outputs."""
    from torch import nn

    for name, mod in modules.items():
        if not isinstance(mod, nn.Linear):
            raise ValueError(
                f"{estimator} supports nn.Linear units only; {name!r} is "
                f"{type(mod).__name__} (use {alternative} or exclude it)"
            )
