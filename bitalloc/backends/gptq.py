"""GPTQ backend: calibration-aware quantization (and SparseGPT for sparse formats), reversibly.

Each planned ``nn.Linear`` is quantized with the OBS error feedback of GPTQ (Frantar et al.,
"GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", ICLR 2023)
from its Hessian ``H = 2 X^T X / n`` over the calibration inputs ``X``; sparse formats use
SparseGPT (Frantar & Alistarh, ICML 2023): joint pruning + quantization with masks chosen per
block from ``w^2 / [chol(H^-1)]_jj^2`` and exact per-row counts (see :mod:`._gptq_core`).

Inputs (see :mod:`._layer_inputs`): models with a list of repeated blocks (HF decoder layers,
found by :func:`bitalloc.sensitivity._blocks.find_blocks`) are processed block by block, each
block fed the outputs of the already quantized blocks before it; layers outside the blocks
then take their inputs from one pass of the partly quantized model. A model without such a
list (any other ``nn.Module``), or ``sequential=False``, collects every layer's inputs from
the float model in one pass. Channel-slice units (rows of one layer with different formats)
take their rows of the layer quantized in their format from the layer's one ``H`` (GPTQ is
row-independent given ``H``): each format used by a layer's slices is run once on the whole
layer, so channel slices equal the ``quantized`` database. 16-bit float formats are a cast
(dense) or SparseGPT without a grid (sparse). The result lies exactly on the reference grid
(:func:`bitalloc.kernels.reference.dequantize` of the codes); with ``keep_codes`` the handle
holds the codes, fp16 scales, zero points and masks per unit (``handle.tensors``).
The algorithm is deterministic (no random component, so no seed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..nn.units import unit_modules, unit_weight
from ..search.formats import QuantFormat
from ..search.solution import Solution
from ..search.space import SearchSpace, Unit
from . import BACKENDS
from .base import AppliedPlan, check_plan, restore_weights
from .quantizer import Quantized

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ._gptq_core import Factor

log = logging.getLogger(__name__)
GRIDS = ("search", "minmax")


@BACKENDS.register("gptq")
@dataclass(frozen=True, slots=True)
class GptqBackend:
    """GPTQ / SparseGPT applied in place from calibration data.

    Args:
        percdamp: damping added to ``H``'s diagonal, as a fraction of its mean; multiplied by
            10 and retried while the Cholesky factorization fails. Default 0.1, not the
            paper's 0.01 (tuned on 128 x 2048 tokens): with CPU-sized calibration (a few
            thousand tokens) 0.1 gave lower held-out layer error than 0.01 on every SmolLM2
            layer measured (benchmarks/gptq.py --layer-study).
        block_size: columns per lazy batch update (GPTQ: 128); rounded to a multiple of the
            group size (and of ``M`` for N:M) so a group's scales see its updated weights.
        act_order: process columns by decreasing ``H_jj`` (dense formats only); groups stay
            the plain consecutive columns with scales from the original weights. Default
            ``True``: on SmolLM2 (16 x 512 calibration, one-pass) it cut the held-out KL of
            uniform int4-g64 from 0.211 to 0.176 and of int3-g64 from 0.648 to 0.563
            (benchmarks/RESULTS.md "Anchors").
        max_batches: use at most this many calibration batches (``None``: all).
        sequential: block-by-block inputs from the quantized prefix (see module doc);
            ``False`` collects all inputs from the float model in one pass.
        keep_codes: keep codes/scales/zeros/masks on the handle (for packing).
        grid: ``"search"`` (default): each group's range by the clip search weighted by
            ``diag(H)`` (:func:`bitalloc.kernels.grid.fit_grid`, the rtn backend's grid);
            ``"minmax"``: the plain range (GPTQ's original grid).
    """

    name: ClassVar[str]
    percdamp: float = 0.1
    block_size: int = 128
    act_order: bool = True
    max_batches: int | None = None
    sequential: bool = True
    keep_codes: bool = False
    grid: str = "search"

    def __post_init__(self) -> None:
        if self.grid not in GRIDS:
            raise ValueError(f"`grid` must be one of {', '.join(GRIDS)}, got {self.grid!r}")
        if (
            isinstance(self.percdamp, bool)
            or not isinstance(self.percdamp, (int, float))
            or not (0 < self.percdamp < 1e3)
        ):
            raise ValueError(f"`percdamp` must be a positive float, got {self.percdamp!r}")
        if (
            isinstance(self.block_size, bool)
            or not isinstance(self.block_size, int)
            or (self.block_size < 1)
        ):
            raise ValueError(f"`block_size` must be a positive int, got {self.block_size!r}")
        for flag in ("act_order", "sequential", "keep_codes"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"`{flag}` must be a bool, got {getattr(self, flag)!r}")

    def supports(self, unit: Unit, fmt: QuantFormat) -> bool:
        """2-D (linear) weights in any format their shape allows."""
        return len(unit.shape) == 2 and not fmt.is_ggml and fmt.supports(unit.shape)

    def apply(self, model: nn.Module, solution: Solution, *, calib: Any = None) -> AppliedPlan:
        """Quantize ``model`` in place; ``calib`` (Calibration or list of batches) is required."""
        from ..nn.blocks import n_batches
        from ..search.calibration import as_calibration

        if calib is None:
            raise ValueError(
                "`calib` is required for the gptq backend (it builds each layer's Hessian from "
                "calibration inputs); pass calib=... or use backend='rtn'"
            )
        calib = as_calibration(calib)
        batches = calib.batches[: n_batches(calib, self.max_batches)]
        modules = check_plan(model, solution)
        plan = self._layers(modules, solution)
        originals: dict[str, torch.Tensor] = {}
        tensors: dict[str, Quantized] = {}

        def quantize_layers(hessians: dict[str, torch.Tensor]) -> None:
            factors: dict[tuple[int, bool], Factor] = {}  # layers fed the same input share H
            for fqn, h in hessians.items():
                mod, entries = plan[fqn]
                originals[fqn] = mod.weight.detach().to("cpu", copy=True)
                self._quantize_layer(mod, entries, h, tensors, factors)

        try:
            self._run(model, plan, batches, calib.forward, quantize_layers)
        except BaseException:
            restore_weights(model, originals)
            raise
        return AppliedPlan(model, solution, originals, restore_weights, tensors=tensors)

    # ------------------------------------------------------------------ internals
    def _layers(
        self, modules: dict[str, nn.Module], solution: Solution
    ) -> dict[str, tuple[nn.Module, list[tuple[Unit, QuantFormat]]]]:
        """Layer FQN -> (module, [(unit, format), ...]); refuses what GPTQ cannot build."""
        from torch import nn

        plan: dict[str, tuple[nn.Module, list[tuple[Unit, QuantFormat]]]] = {}
        for unit, key in zip(solution.space.units, solution.choice):
            mod, fmt = modules[unit.name], QuantFormat.parse(key)
            if not isinstance(mod, nn.Linear):
                raise ValueError(
                    f"gptq supports nn.Linear units only; {unit.name!r} is "
                    f"{type(mod).__name__} (use backend='rtn' or exclude it)"
                )
            if not self.supports(unit, fmt):
                raise ValueError(f"unit {unit.name!r} (shape {unit.shape}) cannot take {fmt.key}")
            plan.setdefault(unit.fqn, (mod, []))[1].append((unit, fmt))
        return plan

    def _run(self, model: nn.Module, plan: dict[str, Any], batches: Any, forward: Any, quant: Any):
        from ..nn.blocks import find_blocks
        from ..nn.hessians import one_pass
        from ._layer_inputs import sequential

        blocks = find_blocks(model, plan) if self.sequential else []
        owned: dict[str, dict[str, nn.Module]] = {}
        for fqn, (mod, _) in plan.items():
            block = next((b for b, _ in blocks if fqn.startswith(b + ".")), None)
            if block is not None:
                owned.setdefault(block, {})[fqn] = mod
        if owned:
            log.debug("gptq: sequential over %d blocks", len(blocks))
            sequential(model, blocks, owned, batches, forward, quant)
        inside = {f for layers in owned.values() for f in layers}
        rest = {fqn: mod for fqn, (mod, _) in plan.items() if fqn not in inside}
        if rest:
            log.debug("gptq: one pass for %d layers", len(rest))
            quant(one_pass(model, rest, batches, forward).hessians())

    def _quantize_layer(
        self,
        mod: nn.Module,
        entries: list[tuple[Unit, QuantFormat]],
        h: torch.Tensor,
        tensors: dict[str, Quantized],
        factors: dict[tuple[int, bool], Factor],
    ) -> None:
        import torch

        weight = mod.weight
        full = weight.detach().clone()  # channel slices: whole-layer GPTQ per format, sliced
        layer: dict[str, Quantized] = {}
        with torch.no_grad():
            for unit, fmt in entries:
                if unit.channels is None:
                    w, res = weight, self.quantize_weight(weight, fmt, h, factors)
                else:
                    if fmt.key not in layer:
                        layer[fmt.key] = self.quantize_weight(full, fmt, h, factors)
                    w, res = weight[slice(*unit.channels)], rows_of(layer[fmt.key], unit.channels)
                w.copy_(res.weight.to(w.dtype))
                if self.keep_codes:
                    tensors[unit.name] = res

    def quantize_weight(
        self,
        w: torch.Tensor,
        fmt: QuantFormat,
        h: torch.Tensor,
        factors: dict[tuple[int, bool], Factor],
    ) -> Quantized:
        """GPTQ/SparseGPT of one 2-D weight block in ``fmt`` given its layer's Hessian ``h``
        (``factors`` caches the Cholesky factor of every ``h`` by identity)."""
        from ._gptq_core import gptq_quantize, hessian_factor

        n_m = getattr(fmt, "n_m", None)
        pruned = _pruned_per_row(fmt, w.shape[1])
        if fmt.is_float and not pruned and n_m is None:
            return Quantized(w.detach().to(_half(fmt)).float(), None, None, None, None)
        order = self.act_order and not pruned and n_m is None
        key = (id(h), order)
        if key not in factors:
            factors[key] = hessian_factor(h.to(w.device), self.percdamp, order)
        return gptq_quantize(
            w.detach().float(),
            factors[key],
            fmt.bits,
            fmt.group_size,
            fmt.symmetric,
            float_kind=fmt.float_kind,
            pruned_per_row=0 if n_m is not None else pruned,
            n_m=n_m,
            block_size=self.block_size,
            search=self.grid == "search",
        )

    def quantized(self, model: nn.Module, space: SearchSpace, calib: Any = None) -> GptqWeights:
        """GPTQ's ``W_hat`` of every (unit, format) of ``space``, from Hessians of the float
        model's inputs (one calibration pass); equals ``apply`` with ``sequential=False``."""
        return GptqWeights(self, model, space, calib)


class GptqWeights:
    """Per-(unit, format) GPTQ results on Hessians collected once from ``model`` as it is (the
    float model): a plan-independent database (EvoPress's per-level layer database), so a
    table prices GPTQ's own rounding. Not cached: each call runs GPTQ on that unit."""

    def __init__(self, backend: GptqBackend, model: nn.Module, space: SearchSpace, calib: Any):
        from torch import nn as tnn

        from ..nn.blocks import n_batches
        from ..nn.hessians import one_pass
        from ..search.calibration import as_calibration

        if calib is None:
            raise ValueError(
                "`calib` is required for the gptq backend (it builds each layer's Hessian from "
                "calibration inputs); pass calib=... or use backend='rtn'"
            )
        calib = as_calibration(calib)
        modules = unit_modules(model, space.units)
        for u in space.units:
            if not isinstance(modules[u.name], tnn.Linear):
                raise ValueError(
                    f"gptq supports nn.Linear units only; {u.name!r} is "
                    f"{type(modules[u.name]).__name__} (use backend='rtn' or exclude it)"
                )
        self.backend, self.space = backend, space
        self._views = [unit_weight(modules[u.name], u) for u in space.units]
        layers = {u.fqn: modules[u.name] for u in space.units}
        batches = calib.batches[: n_batches(calib, backend.max_batches)]
        self.hessians = one_pass(model, layers, batches, calib.forward).hessians()
        self._factors: dict[tuple[int, bool], Factor] = {}
        self._layers = {u.fqn: modules[u.name].weight for u in space.units}
        self._layer: tuple[str, dict[str, Quantized]] = ("", {})  # one layer's formats

    def get(self, index: int, key: str) -> Quantized:
        import torch

        unit = self.space.units[index]
        if key not in unit.allowed:
            raise ValueError(f"unit {unit.name!r} cannot take format {key!r}; {unit.allowed}")
        fmt = self.space.formats[self.space.keys.index(key)]
        h = self.hessians[unit.fqn]
        with torch.no_grad():
            if unit.channels is None:
                return self.backend.quantize_weight(self._views[index], fmt, h, self._factors)
            if self._layer[0] != unit.fqn:
                self._layer = (unit.fqn, {})
            done = self._layer[1]
            if key not in done:  # the whole layer, as apply quantizes channel slices
                w = self._layers[unit.fqn]
                done[key] = self.backend.quantize_weight(w, fmt, h, self._factors)
            return rows_of(done[key], unit.channels)


def rows_of(res: Quantized, channels: tuple[int, int]) -> Quantized:
    """Rows ``[start, stop)`` of a whole-layer result (GPTQ is row-independent given ``H``)."""
    rows = slice(*channels)

    def cut(t: Any) -> Any:
        return None if t is None else t[rows]

    return Quantized(
        res.weight[rows], cut(res.codes), cut(res.scale), cut(res.zero), cut(res.keep)
    )


def _pruned_per_row(fmt: QuantFormat, cols: int) -> int:
    """Zeros per row of a sparse format (``QuantFormat.pruned_per_row``), 0 when dense."""
    if getattr(fmt, "n_m", None) is None and not getattr(fmt, "sparsity", 0.0):
        return 0
    return int(fmt.pruned_per_row(cols))  # type: ignore[attr-defined]


def _half(fmt: QuantFormat) -> torch.dtype:
    import torch

    return torch.bfloat16 if fmt.float_kind == "bf16" else torch.float16
