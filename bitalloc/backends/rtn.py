"""Round-to-nearest backend: fake-quantize each unit's weight in place, reversibly.

Each weight is replaced by ``dequantize(quantize(W))`` of its planned format (see
:mod:`bitalloc.kernels.reference`), so the model computes exactly what a packed checkpoint with
fp16 scales would. The original tensors are kept (on CPU) by the returned handle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..search.formats import QuantFormat
from ..search.solution import Solution
from ..search.space import Unit
from . import BACKENDS
from .base import AppliedPlan, check_plan

if TYPE_CHECKING:
    import torch
    from torch import nn


@BACKENDS.register("rtn")
@dataclass(frozen=True, slots=True)
class RtnBackend:
    """Per-group round-to-nearest quantize/dequantize applied in place (no calibration)."""

    name: ClassVar[str]

    def supports(self, unit: Unit, fmt: QuantFormat) -> bool:
        return fmt.supports(unit.shape)

    def apply(self, model: nn.Module, solution: Solution, *, calib: Any = None) -> AppliedPlan:
        import torch

        from ..kernels.reference import fake_quantize

        modules = check_plan(model, solution)  # validate everything before touching anything
        originals: dict[str, torch.Tensor] = {}  # by layer FQN: channel slices share one copy
        try:
            with torch.no_grad():
                for unit, key in zip(solution.space.units, solution.choice):
                    fmt = QuantFormat.parse(key)
                    weight = modules[unit.name].weight
                    if unit.fqn not in originals:
                        originals[unit.fqn] = weight.detach().to("cpu", copy=True)
                    w = weight if unit.channels is None else weight[slice(*unit.channels)]
                    w.copy_(
                        fake_quantize(w, fmt.bits, fmt.group_size, fmt.symmetric, fmt.float_kind)
                    )
        except BaseException:
            _restore(model, originals)
            raise
        return AppliedPlan(model, solution, originals, _restore)


def _restore(model: nn.Module, originals: dict[str, torch.Tensor]) -> None:
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w in originals.items():
            modules[name].weight.copy_(w)
