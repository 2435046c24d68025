"""Round-to-nearest backend: fake-quantize each unit's weight in place, reversibly.

Each weight is replaced by ``dequantize(quantize(W))`` of its planned format (see
:mod:`bitalloc.kernels.reference`), so the model computes exactly what a packed checkpoint with
fp16 scales would. The original tensors are kept (on CPU) by the returned handle.

Sparse formats (``int4-g128-s0.5``, ``int3-g64-s2:4``) are pruned first, then the kept weights
are quantized (:func:`bitalloc.kernels.sparsity.fake_quantize_sparse`). The mask scores are
``"magnitude"`` ``|W|`` or ``"wanda"`` ``|W_ij| * ||X_j||_2`` (Sun et al., arXiv 2306.11695) with
input norms collected on ``calib`` from the unmodified model in one pass (one-shot, not
Wanda's block-sequential pass).
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

MASK_SCORES = ("magnitude", "wanda")


@BACKENDS.register("rtn")
@dataclass(frozen=True, slots=True)
class RtnBackend:
    """Per-group round-to-nearest quantize/dequantize applied in place.

    Args:
        mask_score: how sparse formats choose the pruned weights: ``"magnitude"`` (no
            calibration) or ``"wanda"`` (needs ``calib`` for the input-feature norms).
    """

    name: ClassVar[str]
    mask_score: str = "magnitude"

    def __post_init__(self) -> None:
        if self.mask_score not in MASK_SCORES:
            raise ValueError(f"`mask_score` must be one of {MASK_SCORES}, got {self.mask_score!r}")

    def supports(self, unit: Unit, fmt: QuantFormat) -> bool:
        return fmt.supports(unit.shape)

    def apply(self, model: nn.Module, solution: Solution, *, calib: Any = None) -> AppliedPlan:
        import torch

        from ..kernels.sparsity import fake_quantize_sparse

        modules = check_plan(model, solution)  # validate everything before touching anything
        norms = self._input_norms(model, solution, calib)
        originals: dict[str, torch.Tensor] = {}  # by layer FQN: channel slices share one copy
        try:
            with torch.no_grad():
                for unit, key in zip(solution.space.units, solution.choice):
                    f = QuantFormat.parse(key)
                    weight = modules[unit.name].weight
                    if unit.fqn not in originals:
                        originals[unit.fqn] = weight.detach().to("cpu", copy=True)
                    w = weight if unit.channels is None else weight[slice(*unit.channels)]
                    q = fake_quantize_sparse(
                        w,
                        f.bits,
                        f.group_size,
                        f.symmetric,
                        f.float_kind,
                        f.sparsity,
                        f.n_m,
                        act_norms=norms.get(unit.fqn),
                    )
                    w.copy_(q)
        except BaseException:
            _restore(model, originals)
            raise
        return AppliedPlan(model, solution, originals, _restore)

    def _input_norms(self, model: nn.Module, solution: Solution, calib: Any) -> dict[str, Any]:
        """Wanda input norms of the layers holding sparse units (empty for magnitude)."""
        fqns = sorted({u.fqn for u, k in zip(solution.space.units, solution.choice) if _sparse(k)})
        if self.mask_score != "wanda" or not fqns:
            return {}
        if calib is None:
            raise ValueError("`calib` is required by the rtn backend with mask_score='wanda'")
        from ..sensitivity.owl import input_norms

        return input_norms(model, fqns, calib)


def _sparse(key: str) -> bool:
    return QuantFormat.parse(key).is_sparse


def _restore(model: nn.Module, originals: dict[str, torch.Tensor]) -> None:
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w in originals.items():
            modules[name].weight.copy_(w)
