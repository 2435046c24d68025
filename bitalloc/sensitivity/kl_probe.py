"""One-at-a-time KL probe: ``cost(u, f) = mean_t KL(p_ref(.|t) || p_{u <- f}(.|t))``.

``p_ref`` is the model's output distribution (``softmax`` over the last dim of ``output.logits``,
or of the output tensor itself) at every token position ``t`` of the calibration batches, and
``p_{u <- f}`` the same with ONLY unit ``u`` stored in format ``f`` (round-to-nearest). KL is
computed from the logit difference (see "Precision" below) and averaged over positions
(weighted by the batch's ``attention_mask`` when a mapping batch has one), in nats.

This is the per-layer measurement of CalibTIP (Hubara et al., "Accurate Post Training
Quantization With Small Calibration Sets", ICML 2021, arXiv 2006.10518, sec. 4: replace one
layer at a time by its low-bit version and record the loss increase) with ModelOpt
AutoQuantize's ``kl_div`` score (the divergence of the quantized logits from the reference
ones) as the loss. It is the most faithful additive estimator and the most expensive:
``n_batches * (1 + sum_u #allowed(u))`` forward passes.

- Each unit is probed alone, also when it belongs to a tie group: the solver adds the costs of
  a group's members (the additivity assumption every table makes).
- Costs are clamped at 0 (float noise) and forced non-increasing with wider formats by
  :func:`~bitalloc.sensitivity.base.monotone` (each cost becomes the minimum over itself and
  every narrower format, ModelOpt's ``score = min(score, prev_score)``): tiny costs of wide
  formats are at the float-noise level and may exceed a narrower one's by chance.
- The unit's weight (or its rows, for a channel unit) is overwritten in place with ``.copy_``
  and restored from a saved copy in a ``finally`` block: the model is bit-exactly unchanged
  afterwards, also when a probe raises.
- Precision: the KL of a wide format is tiny (1e-9..1e-6 nats); the difference of two float32
  ``log_softmax`` outputs has a noise floor near ``6e-8 * |log p|`` per entry, which swamped
  it in tests (negative KLs, int8 above int4). :func:`kl_rows` therefore works on the logit
  difference (float32, no cancellation; float64 fallback on overflow). Unchanged weights
  give exactly 0.
- Memory: the reference logits are kept in float32, ``4 * tokens * vocab`` bytes (SmolLM2,
  4 batches of 256 tokens, vocab 49152: 200 MB; ``max_batches`` bounds it), plus a few
  float32 temporaries of one batch's size while it is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..nn.blocks import n_batches
from ..nn.logits import RefRow, kl_rows, output_logits, reference_row
from ..nn.modes import eval_no_grad
from ..search.table import SensitivityTable
from . import ESTIMATORS
from .base import Cell, EstimatorBase, Progress, Scoring, monotone

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..search.calibration import Calibration

Reference = list[RefRow]
"""One :data:`~bitalloc.nn.logits.RefRow` per calibration batch."""


@ESTIMATORS.register("kl_probe")
@dataclass(frozen=True, slots=True)
class KlProbeEstimator(EstimatorBase):
    """KL divergence of the model's output when one unit alone is quantized.

    Args:
        max_batches: use at most this many calibration batches (``None`` = all). Cost and
            memory grow linearly with it (see the module docstring).
    """

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = True
    max_batches: int | None = 4

    def score_table(
        self, run: Scoring, model: nn.Module, callback: Progress | None
    ) -> SensitivityTable:
        space, calib = run.space, run.calib
        n = n_batches(calib, self.max_batches)
        total, done = int(space.mask.sum()), 0

        def score(c: Cell) -> float:
            nonlocal done
            label = f"{c.unit.name} @ {c.fmt.key}"
            cost = probe(model, calib, ref, c.weight.detach(), c.w_hat, label)
            done += 1
            if callback is not None:
                callback(done, total, "kl probe")
            return cost

        with eval_no_grad(model):
            ref = reference(model, calib, n)
            values = run.per_format(score)
        return run.table(
            monotone(np.maximum(values, 0.0), space),
            forward_passes=n * (1 + total),
            n_positions=int(sum(float(w.sum()) for _, _, w in ref)),
            reference_bytes=int(sum(z.numel() * z.element_size() for z, _, _ in ref)),
        )


def _logits(model: nn.Module, calib: Calibration, index: int) -> torch.Tensor:
    """The logits of calibration batch ``index``."""
    return output_logits(calib.forward(model, calib.batches[index]))


def reference(model: nn.Module, calib: Calibration, n: int) -> Reference:
    """Reference logits (float32), log-sum-exp (float64) and position weights of ``n`` batches.

    Raises ``ValueError`` when the reference output holds NaN/inf.
    """

    out: Reference = []
    for b in range(n):
        batch = calib.batches[b]
        logits = output_logits(calib.forward(model, batch))
        out.append(reference_row(batch, logits, f"calibration batch {b}"))
    return out


def probe(
    model: nn.Module,
    calib: Calibration,
    ref: Reference,
    weight: torch.Tensor,
    quantized: torch.Tensor,
    label: str = "unit",
) -> float:
    """Mean KL to ``ref`` with ``weight`` (a tensor sharing the model's storage) replaced by
    ``quantized`` (its ``W_hat``).

    The weight is overwritten in place and restored bit-exactly in ``finally``.
    """
    import torch

    original = weight.clone()
    q = quantized
    num, den = 0.0, 0.0
    try:
        weight.copy_(q.to(original.dtype))
        for b, (z_ref, lse_ref, pos_w) in enumerate(ref):
            kl = kl_rows(z_ref, lse_ref, _logits(model, calib, b))
            if not bool(torch.isfinite(kl).all()):
                raise ValueError(
                    f"kl_probe: non-finite output with {label} on calibration batch {b} "
                    "(the format overflows the model; drop it from the space for this unit)"
                )
            num += float((kl * pos_w.double()).sum())
            den += float(pos_w.double().sum())
    finally:
        weight.copy_(original)
    return num / max(den, 1e-30)
