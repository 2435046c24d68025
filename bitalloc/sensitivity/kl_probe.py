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
- Costs are clamped at 0 (float noise) and forced non-increasing with wider formats: per unit,
  formats are ordered by ``bits_per_weight(unit.shape)`` and each cost becomes the minimum over
  itself and every narrower format (a running minimum from the narrowest up, ModelOpt's
  ``score = min(score, prev_score)``), so a wider format never costs more: tiny costs of wide
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

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..nn.blocks import n_batches
from ..nn.modes import eval_no_grad
from ..search.table import SensitivityTable
from . import ESTIMATORS
from .base import (
    Deltas,
    Progress,
    backend_meta,
    options,
    require_calibration,
    unit_modules,
    unit_weight,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..search.calibration import Calibration
    from ..search.space import SearchSpace

Reference = list[tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]]
"""Per batch: ``(reference logits [P, V] float32, their logsumexp [P] float64, position
weights [P] float32)``."""


@ESTIMATORS.register("kl_probe")
@dataclass(frozen=True, slots=True)
class KlProbeEstimator:
    """KL divergence of the model's output when one unit alone is quantized.

    Args:
        max_batches: use at most this many calibration batches (``None`` = all). Cost and
            memory grow linearly with it (see the module docstring).
    """

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = True
    max_batches: int | None = 4

    def estimate(
        self,
        model: nn.Module,
        space: SearchSpace,
        calib: Calibration | None,
        *,
        backend: Any = None,
        callback: Progress | None = None,
    ) -> SensitivityTable:
        calib = require_calibration(calib, "kl_probe")
        n = n_batches(calib, self.max_batches)
        started = time.perf_counter()
        modules = unit_modules(model, space)
        deltas = Deltas(model, space, calib, backend)
        mask = space.mask
        total, done = int(mask.sum()), 0
        values = np.full(mask.shape, np.inf)
        with eval_no_grad(model):
            ref = reference(model, calib, n)
            for i, u in enumerate(space.units):
                for j, fmt in enumerate(space.formats):
                    if not mask[i, j]:
                        continue
                    weight = unit_weight(modules[u.name], u).detach()
                    q = deltas.weight(i, j)
                    values[i, j] = probe(model, calib, ref, weight, q, f"{u.name} @ {fmt.key}")
                    done += 1
                    if callback is not None:
                        callback(done, total, "kl probe")
        values = monotone(np.maximum(values, 0.0), space)
        meta = {
            "options": options(self),
            "backend": backend_meta(deltas),
            "forward_passes": n * (1 + total),
            "n_positions": int(sum(float(w.sum()) for _, _, w in ref)),
            "reference_bytes": int(sum(z.numel() * z.element_size() for z, _, _ in ref)),
            "time_s": round(time.perf_counter() - started, 3),
        }
        return SensitivityTable(space=space, values=values, estimator=self.name, meta=meta)


def output_logits(output: Any) -> torch.Tensor:
    """``output.logits`` (attribute or key) when present, else the output tensor itself."""
    import torch

    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if logits is None:
        logits = output
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1:
        raise ValueError(
            "kl_probe needs logits: a model output with `.logits` or a tensor, got "
            f"{type(output).__name__}"
        )
    return logits


def _logits(model: nn.Module, calib: Calibration, index: int) -> torch.Tensor:
    """The logits of calibration batch ``index``."""
    return output_logits(calib.forward(model, calib.batches[index]))


def _position_weights(batch: Any, logits: torch.Tensor) -> torch.Tensor:
    """``attention_mask`` of a mapping batch when it matches the logits, else ones."""
    import torch

    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(logits.shape[:-1]):
        return mask.reshape(-1).to(device=logits.device, dtype=torch.float32)
    return torch.ones(logits.shape[:-1].numel(), device=logits.device)


def reference(model: nn.Module, calib: Calibration, n: int) -> Reference:
    """Reference logits (float32), log-sum-exp (float64) and position weights of ``n`` batches.

    Raises ``ValueError`` when the reference output holds NaN/inf.
    """
    import torch

    out: Reference = []
    for b in range(n):
        batch = calib.batches[b]
        logits = output_logits(calib.forward(model, batch))
        if not bool(torch.isfinite(logits).all()):
            raise ValueError(f"non-finite (NaN/inf) model output on calibration batch {b}")
        z = logits.float().reshape(-1, logits.shape[-1])
        out.append((z, torch.logsumexp(z.double(), dim=-1), _position_weights(batch, logits)))
    return out


def kl_rows(z_ref: torch.Tensor, lse_ref: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(z_ref) || softmax(logits))`` per row (float64 result).

    With ``p = softmax(z_ref)``, ``d = logits - z_ref`` and any per-row shift ``m``,
    ``KL = log sum_v p_v e^(d_v - m) - sum_v p_v (d_v - m)``. Taking ``m = E_p[d]`` keeps every
    term small, so float32 suffices: ``log1p(sum p expm1(d - m)) - sum p (d - m)``. Rows where
    that overflows (a logit moving by > 60 nats) are redone from float64 ``log_softmax``.
    """
    import torch

    z = logits.reshape(z_ref.shape).float()
    p = torch.exp(z_ref - lse_ref.unsqueeze(-1).float())
    d = z - z_ref
    d -= torch.linalg.vecdot(p, d).unsqueeze(-1)
    kl = torch.log1p(torch.linalg.vecdot(p, torch.expm1(d))) - torch.linalg.vecdot(p, d)
    bad = ~torch.isfinite(kl) | (d.amax(dim=-1) > 60.0)
    kl = kl.double()
    if bool(bad.any()):
        lp_ref = z_ref[bad].double() - lse_ref[bad].unsqueeze(-1)
        lp = torch.log_softmax(z[bad].double(), dim=-1)
        kl[bad] = (lp_ref.exp() * (lp_ref - lp)).sum(dim=-1)
    return kl


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


def monotone(values: np.ndarray, space: SearchSpace) -> np.ndarray:
    """Per unit, a running minimum from the narrowest format (by ``bits_per_weight``) up.

    After it, no wider format of a unit costs more than a narrower one; ``inf`` (masked)
    entries are left alone.
    """
    out = values.copy()
    for i, u in enumerate(space.units):
        cols = [j for j, f in enumerate(space.formats) if np.isfinite(out[i, j])]
        cols.sort(key=lambda j: space.formats[j].bits_per_weight(u.shape))
        best = np.inf
        for j in cols:
            best = min(best, out[i, j])
            out[i, j] = best
    return out
