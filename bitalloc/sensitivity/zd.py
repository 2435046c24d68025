"""ZD (z-score distribution) block score times the relative weight error; data-free.

``cost(u, f) = ZD_b(u) * ||Q_f(W_u) - W_u||_F^2 / ||W||_F^2`` with
``ZD_b = sum_W #{w in W : (w - mu_W) / sigma_W > 1} / sum_W numel(W)`` over the weights ``W``
of the modules of block ``b`` that own searched units; ``mu_W`` and ``sigma_W`` (population
standard deviation) are taken per weight tensor, the counts are pooled over the block (a
numel-weighted mean of the per-tensor fractions).

Dumitru et al., "Variable Layer-Wise Quantization: A Simple and Effective Approach to Quantize
LLMs" (arXiv 2406.17415) score a block by the share of its weights much larger than average
and rank blocks by it to give whole blocks one bit width. Here the score scales each unit's
relative round-to-nearest weight error so that any solver can use it; ``W`` in the
denominator is the unit's whole module weight, so channel slices add up to the layer.
Third-party ports count ``|z| > 1`` instead (``absolute=True``). Blocks and the score of units
outside every block (the mean over blocks, or ``1.0`` without blocks) are as in ``lim``
(see :mod:`._blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..nn.blocks import find_blocks
from ..search.table import SensitivityTable
from . import ESTIMATORS
from ._blocks import block_scaled_error, unit_blocks
from .base import EstimatorBase, Progress, Scoring

if TYPE_CHECKING:
    import torch
    from torch import nn


@ESTIMATORS.register("zd")
@dataclass(frozen=True, slots=True)
class ZdEstimator(EstimatorBase):
    """Share of a block's weights with z-score above a threshold, times the relative error.

    Args:
        threshold: count weights with ``z > threshold`` (the paper: 1).
        absolute: count ``|z| > threshold`` instead (as third-party ports do).
    """

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    threshold: float = 1.0
    absolute: bool = False

    def score_table(
        self, run: Scoring, model: nn.Module, callback: Progress | None
    ) -> SensitivityTable:
        space = run.space
        modules = run.modules
        blocks = find_blocks(model, {u.fqn for u in space.units})
        owner = unit_blocks(space, [b for b, _ in blocks])
        weights: dict[str, dict[int, torch.Tensor]] = {}
        for u in space.units:  # each module weight once per block (channel slices share it)
            block = owner[u.name]
            if block is not None:
                w = modules[u.name].weight
                weights.setdefault(block, {})[id(w)] = w
        scores = {b: self.score(list(ws.values()), b) for b, ws in weights.items()}
        values, fallback = block_scaled_error(run, owner, scores, callback)
        return run.table(
            values,
            block_score={b: round(s, 8) for b, s in scores.items()},
            fallback_score=fallback,
        )

    def score(self, weights: list[torch.Tensor], block: str = "block") -> float:
        """Pooled share of weights whose per-tensor z-score exceeds ``threshold``."""
        count, total = 0, 0
        for w in weights:
            count += _count_above(w, self.threshold, self.absolute, block)
            total += w.numel()
        return count / total if total else 0.0


def _count_above(w: torch.Tensor, threshold: float, absolute: bool, block: str) -> int:
    """``#{z > threshold}`` (or ``|z|``) with ``z = (w - mean) / std`` over the tensor."""
    import torch

    x = w.detach().double().reshape(-1)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"non-finite (NaN/inf) weights in {block!r}")
    sigma = x.std(unbiased=False)
    if float(sigma) == 0.0:
        return 0
    z = (x - x.mean()) / sigma
    return int(((z.abs() if absolute else z) > threshold).sum())
