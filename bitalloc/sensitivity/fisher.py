"""Diagonal empirical Fisher: ``cost(u, f) = 1/2 * sum_i F_ii * (Q_f(W) - W)_i^2``.

``F_ii = (1/B) * sum_b g_{b,i}^2`` with ``g_b = dL_b/dW`` the gradient of the loss of
calibration batch ``b`` (one backward per batch; a batch of one sequence gives the per-sample
Fisher). This is the second-order Taylor term of the loss with the diagonal Fisher standing in
for the Hessian, the sensitivity SqueezeLLM weights its k-means with (Kim et al.,
"SqueezeLLM: Dense-and-Sparse Quantization", ICML 2024, arXiv 2306.07629, Sec. 3.1). A
channel-slice unit sums over its own rows, so the slices of a layer add up to the layer's cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..nn.blocks import n_batches
from ..nn.modes import grad_scope
from ..search.table import SensitivityTable
from . import ESTIMATORS
from ._grad import (
    batch_loss,
    check_finite,
    unique_weights,
    unit_rows,
    weight_grads,
    weight_slot,
)
from .base import Cell, EstimatorBase, Progress, Scoring

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..search.calibration import Calibration
    from ..search.space import SearchSpace


@ESTIMATORS.register("fisher")
@dataclass(frozen=True, slots=True)
class FisherEstimator(EstimatorBase):
    """Diagonal Fisher-weighted squared weight error (SqueezeLLM's sensitivity).

    Needs a loss: ``calib.loss(output, batch)`` or the model output's ``.loss``. Costs one
    forward and one backward per calibration batch and a float32 copy of the searched weights.

    Args:
        max_batches: use at most this many calibration batches (``None``: all).
    """

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = True
    max_batches: int | None = None

    def score_table(
        self, run: Scoring, model: nn.Module, callback: Progress | None
    ) -> SensitivityTable:
        import torch

        space, calib, modules = run.space, run.calib, run.modules
        n = n_batches(calib, self.max_batches)
        fisher = diagonal_fisher(model, modules, space, calib, n, callback)
        slot = weight_slot(modules, unique_weights(modules, space)[1])

        def score(c: Cell) -> float:
            f = unit_rows(fisher[slot[c.unit.name]], c.unit.channels)
            return 0.5 * float((f * c.delta.square()).sum(dtype=torch.float64))

        return run.table(run.per_format(score), batches=n)


def diagonal_fisher(
    model: nn.Module,
    modules: dict[str, nn.Module],
    space: SearchSpace,
    calib: Calibration,
    n: int,
    callback: Progress | None = None,
) -> list[torch.Tensor]:
    """``F = mean_b (dL_b/dW)^2`` (float32) for every unique weight, over the first ``n``
    batches, in the order of :func:`~bitalloc.sensitivity._grad.unique_weights`."""
    import torch

    fqns, weights = unique_weights(modules, space)
    fisher = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    with grad_scope(model, weights):
        for b in range(n):
            grads = weight_grads(batch_loss(model, calib, b), weights, fqns)
            for acc, g, fqn in zip(fisher, grads, fqns):
                check_finite(g, fqn)
                acc.add_(g.detach().float().square())
            del grads
            if callback is not None:
                callback(b + 1, n, "fisher backward")
    return [f.div_(n) for f in fisher]
