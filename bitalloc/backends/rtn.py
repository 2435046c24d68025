"""Round-to-nearest backend: fake-quantize each unit's weight in place, reversibly.

Each weight is replaced by its :func:`~bitalloc.backends.quantizer.quantize_unit` result, so
the model computes exactly what a packed checkpoint with fp16 scales would. The original
tensors are kept (on CPU) by the returned handle.

The grid (``grid``): ``"search"`` fits every group's range by the activation-weighted clip
search (:func:`bitalloc.kernels.grid.fit_grid`, importance ``E[x_j^2]`` of the layer's input
over ``calib``, one hooked pass); ``"minmax"`` is the data-free range; ``"auto"`` (default)
searches when ``calib`` is given and falls back to minmax without it. Measured on SmolLM2-135M
(benchmarks/RESULTS.md "The quantizer"), the search roughly halves the KL of uniform int3/int4.
Units that are not ``nn.Linear`` (convolutions) always use minmax.

Sparse formats (``int4-g128-s0.5``, ``int3-g64-s2:4``) are pruned first, then the kept weights
are quantized. The mask scores are ``"magnitude"`` ``|W|`` or ``"wanda"`` ``|W_ij| * ||X_j||_2``
(Sun et al., arXiv 2306.11695) with input norms from the same calibration pass (one-shot, not
Wanda's block-sequential pass).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..nn.units import unit_modules, unit_weight
from ..search.choices import Choice, set_choice
from ..search.formats import QuantFormat
from ..search.solution import Solution
from ..search.space import SearchSpace, Unit
from . import BACKENDS
from .base import AppliedPlan, check_plan, write_weights
from .quantizer import Quantized, quantize_unit

if TYPE_CHECKING:
    import torch
    from torch import nn


class MaskScore(Choice):
    """How sparse formats choose the pruned weights."""

    MAGNITUDE = "magnitude"
    WANDA = "wanda"


MASK_SCORES = MaskScore.values()
SEARCH_STEPS = 16  # = bitalloc.kernels.grid.SEARCH_STEPS (literal: importing kernels loads torch)
MIN_SHRINK = 0.25  # = bitalloc.kernels.grid.MIN_SHRINK


class Grid(str, enum.Enum):
    """How the rtn backend fits each group's scale and zero point."""

    AUTO = "auto"
    MINMAX = "minmax"
    SEARCH = "search"


@BACKENDS.register("rtn")
@dataclass(frozen=True, slots=True)
class RtnBackend:
    """Per-group quantize/dequantize applied in place.

    Args:
        grid: ``"auto"`` (default: clip search with ``calib``, minmax without),
            ``"search"`` (needs ``calib``) or ``"minmax"``.
        search_steps: coarse shrink factors tried per group by the search (``linspace(1,
            min_shrink, search_steps)``, then 8 finer ones around the best).
        min_shrink: the smallest range factor the search tries, in (0, 1].
        mask_score: how sparse formats choose the pruned weights: ``"magnitude"`` (no
            calibration) or ``"wanda"`` (needs ``calib`` for the input-feature norms).
        keep_codes: keep every unit's codes/scales/zeros/masks on the handle
            (``handle.tensors``, for packing).
    """

    name: ClassVar[str]
    grid: Grid | str = Grid.AUTO
    search_steps: int = SEARCH_STEPS
    min_shrink: float = MIN_SHRINK
    mask_score: MaskScore | str = MaskScore.MAGNITUDE
    keep_codes: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "grid", Grid(self.grid))
        except ValueError:
            valid = ", ".join(g.value for g in Grid)
            raise ValueError(f"`grid` must be one of {valid}, got {self.grid!r}") from None
        steps = self.search_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"`search_steps` must be an int >= 1, got {steps!r}")
        shrink = self.min_shrink
        if isinstance(shrink, bool) or not isinstance(shrink, (int, float)):
            raise ValueError(f"`min_shrink` must be a float in (0, 1], got {shrink!r}")
        if not 0.0 < shrink <= 1.0:
            raise ValueError(f"`min_shrink` must be a float in (0, 1], got {shrink!r}")
        set_choice(self, "mask_score", MaskScore)
        if not isinstance(self.keep_codes, bool):
            raise TypeError(f"`keep_codes` must be a bool, got {self.keep_codes!r}")

    def supports(self, unit: Unit, fmt: QuantFormat) -> bool:
        return not fmt.is_ggml and fmt.supports(unit.shape)

    def searches(self, calib: Any) -> bool:
        """Whether this backend uses the clip-searched grid with ``calib``."""
        if self.grid is Grid.SEARCH and calib is None:
            raise ValueError(
                "`calib` is required by the rtn backend with grid='search' (the clip search "
                "weights errors by calibration activations); pass calib=... or grid='minmax'"
            )
        return self.grid is Grid.SEARCH or (self.grid is Grid.AUTO and calib is not None)

    def quantized(self, model: nn.Module, space: SearchSpace, calib: Any = None) -> RtnWeights:
        """``W_hat`` of every (unit, format) of ``space`` (statistics collected once)."""
        return RtnWeights(self, model, space, calib)

    def apply(self, model: nn.Module, solution: Solution, *, calib: Any = None) -> AppliedPlan:
        modules = check_plan(model, solution)  # validate everything before touching anything
        source = self.quantized(model, solution.space, calib)
        return write_weights(model, solution, modules, source, keep_codes=self.keep_codes)


class RtnWeights:
    """The rtn backend's ``W_hat`` for a search space: :func:`quantize_unit` of each unit's
    current weight, with importance ``E[x^2]`` (clip search) and Wanda norms collected from
    ``model`` on ``calib`` in one pass when needed. Not cached: each call quantizes."""

    def __init__(self, backend: RtnBackend, model: nn.Module, space: SearchSpace, calib: Any):

        self.backend, self.space = backend, space
        modules = unit_modules(model, space.units)
        self._views = [unit_weight(modules[u.name], u) for u in space.units]
        search = backend.searches(calib)
        wanda = backend.mask_score == "wanda" and any(f.is_sparse for f in space.formats)
        if wanda and calib is None:
            raise ValueError("`calib` is required by the rtn backend with mask_score='wanda'")
        self.importance: dict[str, torch.Tensor] = {}
        self.norms: dict[str, torch.Tensor] = {}
        if search or wanda:
            from torch import nn as tnn

            from ..nn import input_moments
            from ..search.calibration import as_calibration

            units = space.units
            linear = sorted({u.fqn for u in units if isinstance(modules[u.name], tnn.Linear)})
            cal = as_calibration(calib)
            moments = input_moments(model, linear, cal) if linear else {}
            if search:
                self.importance = {f: m.mean_square for f, m in moments.items()}
            if wanda:
                self.norms = {f: m.l2_norm for f, m in moments.items()}

    def get(self, index: int, key: str) -> Quantized:
        unit = self.space.units[index]
        if key not in unit.allowed:
            raise ValueError(f"unit {unit.name!r} cannot take format {key!r}; {unit.allowed}")
        fmt = self.space.formats[self.space.keys.index(key)]
        imp = self.importance.get(unit.fqn)
        return quantize_unit(
            self._views[index],
            fmt,
            importance=imp,
            act_norms=self.norms.get(unit.fqn),
            steps=self.backend.search_steps,
            min_shrink=self.backend.min_shrink,
        )
