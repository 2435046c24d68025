"""Integer grids: fit each group's fp16 scale (and zero point), then code onto it.

One function chooses the grid everywhere a format is materialised (rtn, GPTQ's groups, packed
checkpoints, the estimators' ``W_hat``): :func:`fit_grid`.

- ``importance=None``: **minmax**, the data-free rule of :mod:`bitalloc.kernels.reference`
  (the range ``[min(w, 0), max(w, 0)]`` of the group; ``max|w|`` when symmetric).
- ``importance`` given (one non-negative weight per input column, e.g. ``E[x_j^2]`` of the
  layer's input over calibration tokens, or the Hessian diagonal ``H_jj`` that GPTQ uses):
  **activation-weighted clip search**. Every group tries the shrunk ranges
  ``[a * lo, a * hi]`` for ``a`` in ``linspace(1, min_shrink, steps)``, then ``refine`` more
  factors within one coarse step of its best (coarse to fine), and keeps the one with the
  smallest ``sum_j importance_j * (w_j - w_hat_j)^2`` (the layer's output error under a
  diagonal input covariance). ``a = 1`` is minmax, so the searched error is never above
  minmax's (ties keep the widest range). Defaults (16 + 8 factors on ``[0.25, 1]``) were
  chosen on SmolLM2-135M (benchmarks/RESULTS.md "The quantizer"): as good as 50 factors on
  ``[0.3, 1]`` at int3/int4, at half the time. Importance is floored at ``1e-6 * mean`` so that an
  input never seen in the calibration data still counts a little.

The error of each candidate is measured with its fp16-rounded scale and integer zero point,
exactly as the packed checkpoint stores them, so the chosen ``w_hat`` is what a packed model
dequantizes to. Same search as the weighted clipping of AWQ (Lin et al., MLSys 2024, "clip"
step) and llama.cpp's imatrix-weighted rounding search (``make_qx_quants``).
"""

from __future__ import annotations

import torch

FP16_TINY = 2.0**-24  # smallest positive fp16 (subnormal): scales never round to zero
SEARCH_STEPS = 16
REFINE_STEPS = 8
MIN_SHRINK = 0.25
_IMPORTANCE_FLOOR = 1e-6


def grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``w`` ``[N, K, ...]`` as float32 ``[N, G, group]`` (``None`` = one group per row)."""
    rows = w.shape[0]
    flat = w.detach().float().reshape(rows, -1)
    cols = flat.shape[1]
    gs = cols if group_size is None else group_size
    if cols % gs:
        raise ValueError(f"in_features {cols} is not divisible by group_size {gs}")
    return flat.reshape(rows, cols // gs, gs)


def _check_bits(bits: int) -> None:
    if not 2 <= bits <= 8:
        raise ValueError(f"`bits` must be in 2..8 for integer quantization, got {bits}")


def _scale_zero(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp16 scale and integer zero of the ranges ``[lo, hi]`` (``hi`` = max|w| if symmetric)."""
    if symmetric:
        return (hi / (2 ** (bits - 1) - 1)).clamp(min=FP16_TINY).half(), None
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp(min=FP16_TINY).half()
    zero = torch.clamp(torch.round(-lo / scale.float()), 0, qmax)
    return scale, zero.to(torch.int16)


def encode(
    g: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int
) -> torch.Tensor:
    """Nearest codes of grouped weights ``g`` ``[N, G, group]`` on a grid (int16, signed when
    symmetric)."""
    s = scale.float().unsqueeze(-1)
    if zero is None:
        qmax = 2 ** (bits - 1) - 1
        return torch.clamp(torch.round(g / s), -qmax - 1, qmax).to(torch.int16)
    z = zero.float().unsqueeze(-1)
    return torch.clamp(torch.round(g / s) + z, 0, 2**bits - 1).to(torch.int16)


def decode(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    """``(q - zero) * scale`` as float32 ``[N, G, group]``."""
    qf = q.float()
    if zero is not None:
        qf = qf - zero.float().unsqueeze(-1)
    return qf * scale.float().unsqueeze(-1)


def _ranges(g: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if symmetric:
        amax = g.abs().amax(dim=-1)
        return -amax, amax
    return g.amin(dim=-1).clamp(max=0.0), g.amax(dim=-1).clamp(min=0.0)


def check_importance(importance: torch.Tensor, cols: int) -> torch.Tensor:
    """``importance`` as a finite, non-negative float32 vector of ``cols`` entries."""
    imp = importance.detach().float().reshape(-1)
    if imp.numel() != cols:
        raise ValueError(f"`importance` has {imp.numel()} entries; the weight has {cols} inputs")
    if not bool(torch.isfinite(imp).all()) or bool((imp < 0).any()):
        raise ValueError("`importance` must be finite and non-negative")
    mean = float(imp.mean())
    if mean <= 0.0:  # no signal at all: every input counts the same (plain MSE)
        return torch.ones_like(imp)
    return imp.clamp(min=_IMPORTANCE_FLOOR * mean)


def fit_grid(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool = False,
    importance: torch.Tensor | None = None,
    *,
    steps: int = SEARCH_STEPS,
    min_shrink: float = MIN_SHRINK,
    refine: int = REFINE_STEPS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scales (fp16 ``[N, G]``) and zero points (int16 ``[N, G]``, ``None`` if symmetric).

    Minmax without ``importance``; the activation-weighted clip search with it (see the
    module doc): ``steps`` shrink factors evenly spaced on ``[min_shrink, 1]``, then
    ``refine`` factors spread over one coarse step on either side of each group's best.
    ``importance`` holds one weight per input column (``[K']``).
    """
    _check_bits(bits)
    g = grouped(w, group_size)
    lo, hi = _ranges(g, symmetric)
    if importance is None:
        return _scale_zero(lo, hi, bits, symmetric)
    for name, value in (("steps", steps), ("refine", refine)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "steps"):
            raise ValueError(f"`{name}` must be an int >= {int(name == 'steps')}, got {value!r}")
    if not 0.0 < min_shrink <= 1.0:
        raise ValueError(f"`min_shrink` must be in (0, 1], got {min_shrink!r}")
    imp = check_importance(importance.to(g.device), g.shape[1] * g.shape[2])
    imp = imp.reshape(1, *g.shape[1:])
    best = _Best(g, lo, hi, bits, symmetric, imp)
    for a in torch.linspace(1.0, min_shrink, steps)[1:].tolist():
        best.offer(torch.full_like(lo, a))
    if refine and steps > 1:
        step = (1.0 - min_shrink) / (steps - 1)
        centre = best.alpha.clone()
        for d in torch.linspace(-step, step, refine + 2)[1:-1].tolist():
            best.offer((centre + d).clamp(min_shrink, 1.0))
    return best.scale, best.zero


class _Best:
    """Per group, the lowest weighted error seen so far and its grid (starts at minmax)."""

    def __init__(self, g, lo, hi, bits, symmetric, imp) -> None:  # noqa: ANN001
        self.g, self.lo, self.hi, self.bits, self.sym, self.imp = g, lo, hi, bits, symmetric, imp
        self.scale, self.zero = _scale_zero(lo, hi, bits, symmetric)
        self.err = _error(g, self.scale, self.zero, bits, imp)
        self.alpha = torch.ones_like(lo)

    def offer(self, alpha: torch.Tensor) -> None:
        s, z = _scale_zero(self.lo * alpha, self.hi * alpha, self.bits, self.sym)
        err = _error(self.g, s, z, self.bits, self.imp)
        better = err < self.err
        self.err = torch.where(better, err, self.err)
        self.scale = torch.where(better, s, self.scale)
        self.alpha = torch.where(better, alpha, self.alpha)
        if z is not None and self.zero is not None:
            self.zero = torch.where(better, z, self.zero)


def _error(
    g: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, bits: int, imp: torch.Tensor
) -> torch.Tensor:
    diff = decode(encode(g, s, z, bits), s, z) - g
    return (diff.square() * imp).sum(dim=-1)


def quantize(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool = False,
    importance: torch.Tensor | None = None,
    *,
    steps: int = SEARCH_STEPS,
    min_shrink: float = MIN_SHRINK,
    refine: int = REFINE_STEPS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(codes, scale, zero)`` of ``w`` on the grid of :func:`fit_grid`.

    ``codes`` int16 ``[N, G, group]`` (signed when symmetric), ``scale`` fp16 ``[N, G]``,
    ``zero`` int16 ``[N, G]`` or ``None``.
    """
    scale, zero = fit_grid(
        w,
        bits,
        group_size,
        symmetric,
        importance,
        steps=steps,
        min_shrink=min_shrink,
        refine=refine,
    )
    return encode(grouped(w, group_size), scale, zero, bits), scale, zero


def weighted_error(w: torch.Tensor, w_hat: torch.Tensor, importance: torch.Tensor) -> float:
    """``sum_ij importance_j * (w_ij - w_hat_ij)^2`` (float64 sum)."""
    rows = w.shape[0]
    d = (w.detach().float() - w_hat.detach().float()).reshape(rows, -1)
    imp = importance.detach().float().reshape(1, -1).to(d.device)
    return float((d.square() * imp).sum(dtype=torch.float64))
