"""Pure-torch reference ops for group-wise integer quantization.

Layout: a weight ``w`` of shape ``[N, K, ...]`` is viewed as ``[N, K']`` (``K' = prod(shape[1:])``)
and split along ``K'`` into groups of ``group_size`` consecutive columns (``None`` = the whole
row, i.e. per output channel). Each group has one scale stored as fp16 and, when asymmetric,
one integer zero point in ``[0, 2^bits - 1]``:

- asymmetric: ``scale = (hi - lo) / (2^bits - 1)``, ``zero = round(-lo / scale)``,
  ``q = clamp(round(w / scale) + zero, 0, 2^bits - 1)``, ``w_hat = (q - zero) * scale``
- symmetric:  ``scale = hi / (2^(bits-1) - 1)``,
  ``q = clamp(round(w / scale), -2^(bits-1), 2^(bits-1) - 1)``, ``w_hat = q * scale``

with ``[lo, hi]`` the group's range ``[min(w, 0), max(w, 0)]`` (``hi = max|w|`` symmetric), or,
when an ``importance`` vector is given, the shrunk range chosen by the activation-weighted clip
search of :func:`bitalloc.kernels.grid.fit_grid`. Scales are rounded to fp16 BEFORE the codes
are computed, so ``w_hat`` equals exactly what a packed fp16-scale checkpoint dequantizes to.
"""

from __future__ import annotations

import torch

from .grid import decode
from .grid import quantize as _grid_quantize


def quantize(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool = False,
    importance: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Codes on the group's grid (minmax, or the clip search when ``importance`` is given).

    Args:
        w: float weight ``[N, K, ...]``.
        bits: 2..8.
        group_size: columns per group, or ``None`` for per-channel.
        symmetric: symmetric grid without zero point.
        importance: one weight per input column (``[K']``, e.g. ``E[x^2]``), or ``None``.

    Returns:
        ``(q, scale, zero)``: ``q`` int16 ``[N, G, group]`` (signed when symmetric), ``scale``
        fp16 ``[N, G]``, ``zero`` int16 ``[N, G]`` or ``None`` when symmetric.
    """
    return _grid_quantize(w, bits, group_size, symmetric, importance)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    shape: torch.Size | tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of :func:`quantize`: ``(q - zero) * scale`` reshaped to ``shape``."""
    return decode(q, scale, zero).reshape(shape).to(dtype)


def fake_quantize(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool = False,
    float_kind: str | None = None,
    importance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Quantize-dequantize ``w`` (same shape and dtype). ``bits=16`` rounds to bf16/fp16."""
    if bits == 16:
        half = torch.bfloat16 if (float_kind or "bf16") == "bf16" else torch.float16
        return w.detach().to(half).to(w.dtype)
    q, scale, zero = quantize(w, bits, group_size, symmetric, importance)
    return dequantize(q, scale, zero, w.shape, w.dtype)
