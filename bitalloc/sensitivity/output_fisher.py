"""Output Fisher: ``cost(u, f) = mean_b sum_{t,o} (dL_b/dY_{t,o})^2 * (Y_f - Y)_{t,o}^2``.

``Y = x W^T + b`` is the output of the unit's ``nn.Linear`` on calibration batch ``b`` and
``Y_f - Y = x (Q_f(W) - W)^T``: the squared output perturbation weighted by the diagonal
Fisher at the layer **output**, ModelOpt AutoQuantize's default ``"gradient"`` score (NVIDIA
TensorRT Model Optimizer, ``modelopt/torch/quantization/algorithms.py``,
``AutoQuantizeGradientSearcher``). One forward and one backward per batch score every format
at once: a forward hook keeps ``x`` and ``Y``, ``dL/dY`` comes from ``autograd.grad`` of the
loss with respect to the recorded outputs (no weight gradients are formed). A channel-slice
unit sums over its own output channels (the last-dim slice of ``Y``).

As in ModelOpt, scores are then forced non-increasing as formats get wider: with the unit's
allowed formats sorted by ``bits_per_weight(unit.shape)``, each score becomes the minimum of
itself and the scores of all narrower formats (``score = min(score, prev_score)``), so more
bits never predict more loss even where round-to-nearest happens to be noisier.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..nn.blocks import n_batches
from ..nn.modes import grad_scope
from ..search.table import SensitivityTable
from . import ESTIMATORS
from ._grad import batch_loss, check_finite, unique_weights
from .base import Deltas, EstimatorBase, Progress, Scoring, monotone

if TYPE_CHECKING:
    from torch import nn

    from ..search.calibration import Calibration
    from ..search.space import SearchSpace


@ESTIMATORS.register("output_fisher")
@dataclass(frozen=True, slots=True)
class OutputFisherEstimator(EstimatorBase):
    """Fisher-weighted output error of each Linear unit (ModelOpt AutoQuantize "gradient").

    Needs a loss: ``calib.loss(output, batch)`` or the model output's ``.loss``. Supports
    ``nn.Linear`` units only. Costs one forward and one backward per batch plus one
    ``[tokens, in] @ [in, out]`` product per (unit, format).

    Args:
        max_batches: use at most this many calibration batches (``None``: all).
    """

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = True
    linear_only: ClassVar[str | None] = "fisher"
    max_batches: int | None = None

    def score_table(
        self, run: Scoring, model: nn.Module, callback: Progress | None
    ) -> SensitivityTable:
        space, calib, modules, deltas = run.space, run.calib, run.modules, run.deltas
        n = n_batches(calib, self.max_batches)
        raw = np.zeros((len(space), len(space.formats)))
        fqns = list(dict.fromkeys(u.fqn for u in space.units))  # modules, in space order
        with grad_scope(model, unique_weights(modules, space)[1]):
            for b in range(n):
                _score_batch(model, modules, space, calib, b, fqns, raw, deltas)
                if callback is not None:
                    callback(b + 1, n, "output fisher")
        return run.table(monotone(raw / n, space), batches=n)


def _score_batch(
    model: nn.Module,
    modules: dict[str, nn.Module],
    space: SearchSpace,
    calib: Calibration,
    b: int,
    fqns: list[str],
    acc: np.ndarray,
    deltas: Deltas,
) -> None:
    """Add ``sum (dL/dY)^2 (x dW_f^T)^2`` of batch ``b`` to ``acc[unit, format]``."""
    import torch

    owner = {u.fqn: modules[u.name] for u in space.units}
    calls: dict[str, list[tuple[Any, Any]]] = defaultdict(list)

    def hook(fqn: str):  # noqa: ANN202 - closure factory
        def fn(_mod: Any, args: tuple[Any, ...], out: Any) -> None:
            calls[fqn].append((args[0], out))

        return fn

    handles = [owner[f].register_forward_hook(hook(f)) for f in fqns]
    try:
        loss = batch_loss(model, calib, b)
    finally:
        for h in handles:
            h.remove()
    missing = [f for f in fqns if not calls[f]]
    if missing:
        raise ValueError(f"calibration forward never reached units {missing[:5]}")
    outs = [y for f in fqns for _, y in calls[f]]
    grads = iter(torch.autograd.grad(loss, outs, allow_unused=True))
    grad_out = {f: [next(grads) for _ in calls[f]] for f in fqns}
    mask = space.mask
    with torch.no_grad():
        for f in fqns:
            if any(g is None for g in grad_out[f]):
                raise ValueError(f"the calibration loss does not depend on unit {f!r}")
            for g in grad_out[f]:
                check_finite(g, f)
        for i, u in enumerate(space.units):
            rows = slice(*u.channels) if u.channels is not None else slice(None)
            dws = [(j, deltas(i, j)) for j in range(len(space.formats)) if mask[i, j]]
            for (x, _), g in zip(calls[u.fqn], grad_out[u.fqn]):
                x2 = x.detach().reshape(-1, x.shape[-1]).float()
                g2 = g.reshape(-1, g.shape[-1])[:, rows].float().square()
                for j, dw in dws:
                    dy2 = (x2 @ dw.to(x2.device).T).square()
                    acc[i, j] += float((g2 * dy2).sum(dtype=torch.float64))
