"""Reference log-probabilities and per-position KL rows of a model's output.

A reference row is ``(logits [P, V] float32, their logsumexp [P] float64, position weights [P]
float32)``: the model's output at every token position of one batch, flattened, with the
batch's ``attention_mask`` as weights when a mapping batch carries one of the logits' shape.
:func:`kl_rows` scores another output against it from the logit difference, so the tiny KLs of
wide formats survive float32 (see its docstring).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

RefRow = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]
"""``(reference logits [P, V] float32, their logsumexp [P] float64, position weights [P])``."""


def output_logits(output: Any) -> torch.Tensor:
    """``output.logits`` (attribute or key) when present, else the first element of a tuple,
    else the output tensor itself; ValueError when that is not a tensor."""
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


def position_weights(batch: Any, logits: torch.Tensor) -> torch.Tensor:
    """``attention_mask`` of a mapping batch (flattened, float32) when it matches the logits'
    leading shape, else ones."""
    import torch

    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(logits.shape[:-1]):
        return mask.reshape(-1).to(device=logits.device, dtype=torch.float32)
    return torch.ones(logits.shape[:-1].numel(), device=logits.device)


def reference_row(batch: Any, logits: torch.Tensor, where: str) -> RefRow:
    """The :data:`RefRow` of ``logits`` (the model's output on ``batch``); ValueError naming
    ``where`` (e.g. "calibration batch 3") when they hold NaN/inf."""
    import torch

    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"non-finite (NaN/inf) reference model output on {where}")
    z = logits.float().reshape(-1, logits.shape[-1])
    return z, torch.logsumexp(z.double(), dim=-1), position_weights(batch, logits)


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
