"""LIM (layer input modification) block importance times the relative weight error.

``cost(u, f) = I_b(u) * ||Q_f(W_u) - W_u||_F^2 / ||W||_F^2`` with
``I_b = 1 - mean_t cos(x_t^in, x_t^out)``, the mean over calibration tokens ``t`` of the cosine
between the hidden state entering decoder block ``b`` and the one leaving it.

Dumitru et al., "Variable Layer-Wise Quantization: A Simple and Effective Approach to Quantize
LLMs" (arXiv 2406.17415) rank whole blocks by ``-cos(x_in, x_out)``: a block that barely
rotates its input matters little. The paper assigns one bit width per block by ranking; here
the block importance (shifted by 1 so it is >= 0, same ranking) scales each unit's relative
round-to-nearest weight error so that any solver can use it. ``W`` is the unit's whole module
weight, so the costs of a layer's channel slices add up to the layer's. Blocks are the entries
of the model's largest unit-owning ``nn.ModuleList`` (see :mod:`._blocks`); units outside
every block (``lm_head`` if searched, or every unit of a model without such a list) get the
mean importance of the blocks, or ``1.0`` when there are none (then the cost equals the
``weight_error`` estimator's, and no forward pass runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..nn.blocks import find_blocks, n_batches
from ..nn.modes import eval_no_grad
from ..search.table import SensitivityTable
from . import ESTIMATORS
from ._blocks import block_scaled_error, unit_blocks
from .base import EstimatorBase, Progress, Scoring

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..search.calibration import Calibration


@ESTIMATORS.register("lim")
@dataclass(frozen=True, slots=True)
class LimEstimator(EstimatorBase):
    """Block importance ``1 - cos(x_in, x_out)`` times the unit's relative weight error.

    Args:
        max_batches: use at most this many calibration batches (``None`` = all). One forward
            pass per batch.
    """

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = True
    max_batches: int | None = None

    def score_table(
        self, run: Scoring, model: nn.Module, callback: Progress | None
    ) -> SensitivityTable:
        space, calib = run.space, run.calib
        n = n_batches(calib, self.max_batches)
        blocks = find_blocks(model, {u.fqn for u in space.units})
        scores = block_importance(model, blocks, calib, n, callback) if blocks else {}
        owner = unit_blocks(space, [b for b, _ in blocks])
        missing = sorted({b for b in owner.values() if b is not None} - scores.keys())
        if missing:
            raise ValueError(f"the calibration forward never reached blocks {missing[:5]}")
        values, fallback = block_scaled_error(run, owner, scores, callback)
        return run.table(
            values,
            block_importance={b: round(s, 8) for b, s in scores.items()},
            fallback_importance=fallback,
            forward_passes=n if blocks else 0,
        )


def _hidden(value: Any) -> torch.Tensor | None:
    """The hidden-state tensor of a block's input or output (tuple -> first entry)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return _hidden(value[0])
    if isinstance(value, Mapping):
        for key in ("hidden_states", "last_hidden_state"):
            if isinstance(value.get(key), torch.Tensor):
                return value[key]
    return None


def block_importance(
    model: nn.Module,
    blocks: list[tuple[str, nn.Module]],
    calib: Calibration,
    n_batches: int,
    callback: Progress | None = None,
) -> dict[str, float]:
    """``1 - mean cos(x_in, x_out)`` per block over the tokens of the first ``n_batches``.

    The block input is its first positional argument (or ``hidden_states=``), its output the
    returned tensor (or the first entry of a returned tuple). Blocks the forward never reaches
    get no entry. Raises ``ValueError`` on NaN/inf hidden states. The model runs in eval mode; each
    module's training flag is restored afterwards.
    """
    import torch
    import torch.nn.functional as F

    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def hook(name: str):  # noqa: ANN202 - closure factory
        def fn(_mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            x_in = _hidden(args[0]) if args else _hidden(kwargs.get("hidden_states"))
            x_out = _hidden(out)
            if x_in is None or x_out is None or x_in.shape != x_out.shape:
                raise ValueError(
                    f"block {name!r}: cannot pair its input and output hidden states (shapes "
                    f"{getattr(x_in, 'shape', None)} / {getattr(x_out, 'shape', None)})"
                )
            a = x_in.detach().float().reshape(-1, x_in.shape[-1])
            b = x_out.detach().float().reshape(-1, x_out.shape[-1])
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise ValueError(f"non-finite (NaN/inf) hidden states around block {name!r}")
            cos = F.cosine_similarity(a, b, dim=-1, eps=1e-12)
            sums[name] = sums.get(name, 0.0) + float(cos.double().sum())
            counts[name] = counts.get(name, 0) + int(cos.numel())

        return fn

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in blocks]
    try:
        with eval_no_grad(model):
            for i in range(n_batches):
                calib.forward(model, calib.batches[i])
                if callback is not None:
                    callback(i + 1, n_batches, "lim forward")
    finally:
        for h in handles:
            h.remove()
    return {n: max(0.0, 1.0 - sums[n] / counts[n]) for n, _ in blocks if n in counts}
