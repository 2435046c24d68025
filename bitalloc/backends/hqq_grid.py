"""The hqq backend: build each unit with HQQ's own quantizer (half-quadratic optimised zeros).

``W_hat`` is ``HQQLinear(layer, BaseQuantizeConfig(nbits, group_size)).dequantize()``, computed
in float32 on the CPU: the same calls :func:`bitalloc.backends.export.hqq.quantize_model` makes
through ``AutoHQQHFModel``, so a table, the pipeline's measured KL and ``apply`` price exactly
what HQQ's engine will hold for the plan. HQQ always keeps a zero point: asymmetric integer
formats of 2, 3, 4 or 8 bits, groups that are a multiple of 8 and divide the row, or
per-channel; 16-bit floats are a plain cast. HQQ's groups lie within a row and its optimiser
works per group, so a slice of output channels gets the rows the whole layer would.
Needs the ``export`` extra (``hqq``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..search.formats import QuantFormat
from ..search.solution import Solution
from ..search.space import SearchSpace, Unit
from . import BACKENDS
from .base import AppliedPlan, UnitViews, check_plan, refuse_unsupported, write_weights
from .quantizer import Quantized, quantize_unit

if TYPE_CHECKING:
    import torch
    from torch import nn

HQQ_BITS = (2, 3, 4, 8)


@BACKENDS.register("hqq")
@dataclass(frozen=True, slots=True)
class HqqBackend:
    """HQQ's quantizer, in place and reversibly (data-free: no calibration is used).

    Args:
        keep_codes: keep every unit's ``W_hat`` on the handle (``handle.tensors``).
    """

    name: ClassVar[str]
    keep_codes: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.keep_codes, bool):
            raise TypeError(f"`keep_codes` must be a bool, got {self.keep_codes!r}")

    def supports(self, unit: Unit, fmt: QuantFormat) -> bool:
        """2-D whole weights in an asymmetric 2/3/4/8-bit grid (group a multiple of 8 dividing
        the row, or per-channel), or a 16-bit float."""
        if len(unit.shape) != 2 or fmt.is_sparse or fmt.is_ggml:
            return False
        if fmt.is_float:
            return True
        g = fmt.group_size
        grid_ok = g is None or (g % 8 == 0 and unit.shape[1] % g == 0)
        return fmt.bits in HQQ_BITS and not fmt.symmetric and grid_ok

    def quantized(self, model: nn.Module, space: SearchSpace, calib: Any = None) -> HqqWeights:
        return HqqWeights(model, space)

    def apply(self, model: nn.Module, solution: Solution, *, calib: Any = None) -> AppliedPlan:
        modules = check_plan(model, solution)
        refuse_unsupported(
            self,
            solution,
            "asymmetric 2/3/4/8-bit grids (groups a multiple of 8, or per-channel) and 16-bit "
            "floats on 2-D weights",
        )
        source = self.quantized(model, solution.space)
        return write_weights(model, solution, modules, source, keep_codes=self.keep_codes)


class HqqWeights(UnitViews):
    """``W_hat`` of every (unit, format) of a space by HQQ's quantizer."""

    def get(self, index: int, key: str) -> Quantized:
        _, fmt, w = self.take(index, key)
        if fmt.is_float:
            return quantize_unit(w, fmt)
        return Quantized(hqq_weight(w, fmt), None, None, None, None)


def hqq_weight(w: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """HQQ's dequantized ``W_hat`` of the float32 weight ``w`` ``[out, in]`` in ``fmt``."""
    import torch
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    config = BaseQuantizeConfig(nbits=fmt.bits, group_size=fmt.group_size)
    q = HQQLinear(layer, config, compute_dtype=torch.float32, device="cpu", del_orig=True)
    with torch.no_grad():
        return q.dequantize().reshape(w.shape).float().contiguous()
