"""Pure-torch reference ops for group-wise integer quantization (round-to-nearest).

Layout: a weight ``w`` of shape ``[N, K, ...]`` is viewed as ``[N, K']`` (``K' = prod(shape[1:])``)
and split along ``K'`` into groups of ``group_size`` consecutive columns (``None`` = the whole
row, i.e. per output channel). Each group has one scale stored as fp16 and, when asymmetric,
one integer zero point in ``[0, 2^bits - 1]``:

- asymmetric: ``scale = (max(w,0) - min(w,0)) / (2^bits - 1)``, ``zero = round(-min / scale)``,
  ``q = clamp(round(w / scale) + zero, 0, 2^bits - 1)``, ``w_hat = (q - zero) * scale``
- symmetric:  ``scale = max|w| / (2^(bits-1) - 1)``,
  ``q = clamp(round(w / scale), -2^(bits-1), 2^(bits-1) - 1)``, ``w_hat = q * scale``

Scales are rounded to fp16 BEFORE the codes are computed, so ``w_hat`` equals exactly what a
packed fp16-scale checkpoint dequantizes to.
"""

from __future__ import annotations

import torch

_FP16_TINY = 2.0**-24  # smallest positive fp16 (subnormal): scales never round to zero


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    rows = w.shape[0]
    flat = w.reshape(rows, -1)
    cols = flat.shape[1]
    gs = cols if group_size is None else group_size
    if cols % gs:
        raise ValueError(f"in_features {cols} is not divisible by group_size {gs}")
    return flat.reshape(rows, cols // gs, gs)


def quantize(
    w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest codes.

    Args:
        w: float weight ``[N, K, ...]``.
        bits: 2..8.
        group_size: columns per group, or ``None`` for per-channel.
        symmetric: symmetric grid without zero point.

    Returns:
        ``(q, scale, zero)``: ``q`` int16 ``[N, G, group]`` (signed when symmetric), ``scale``
        fp16 ``[N, G]``, ``zero`` int16 ``[N, G]`` or ``None`` when symmetric.
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"`bits` must be in 2..8 for integer quantization, got {bits}")
    g = _grouped(w.detach().float(), group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        amax = g.abs().amax(dim=-1)
        scale = (amax / qmax).clamp(min=_FP16_TINY).half()
        q = torch.clamp(torch.round(g / scale.float().unsqueeze(-1)), -qmax - 1, qmax)
        return q.to(torch.int16), scale, None
    qmax = 2**bits - 1
    # the range always contains 0 so the integer zero point lies in [0, qmax] (as in GPTQ)
    lo = g.amin(dim=-1).clamp(max=0.0)
    hi = g.amax(dim=-1).clamp(min=0.0)
    scale = ((hi - lo) / qmax).clamp(min=_FP16_TINY).half()
    s = scale.float()
    zero = torch.clamp(torch.round(-lo / s), 0, qmax)
    q = torch.clamp(torch.round(g / s.unsqueeze(-1)) + zero.unsqueeze(-1), 0, qmax)
    return q.to(torch.int16), scale, zero.to(torch.int16)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    shape: torch.Size | tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of :func:`quantize`: ``(q - zero) * scale`` reshaped to ``shape``."""
    qf = q.float()
    if zero is not None:
        qf = qf - zero.float().unsqueeze(-1)
    return (qf * scale.float().unsqueeze(-1)).reshape(shape).to(dtype)


def fake_quantize(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool = False,
    float_kind: str | None = None,
) -> torch.Tensor:
    """Quantize-dequantize ``w`` (same shape and dtype). ``bits=16`` rounds to bf16/fp16."""
    if bits == 16:
        half = torch.bfloat16 if (float_kind or "bf16") == "bf16" else torch.float16
        return w.detach().to(half).to(w.dtype)
    q, scale, zero = quantize(w, bits, group_size, symmetric)
    return dequantize(q, scale, zero, w.shape, w.dtype)
