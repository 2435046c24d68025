"""GPTQ and SparseGPT on one weight matrix, given the layer's Hessian (pure torch).

Both minimise the layer's output error ``||W X - W_hat X||^2 = tr(dW H dW^T)`` with ``H = 2 X X^T
/ n`` by the Optimal Brain Surgeon update: columns are fixed left to right and each column's
rounding (or pruning) error ``e = (w_j - q_j) / U_jj`` is spread onto the columns not fixed yet,
``W[:, j:] -= e U[j, j:]``, where ``U`` is the upper Cholesky factor of ``(H + damp I)^-1``
(Frantar et al., "GPTQ", ICLR 2023, Alg. 1, with lazy batch updates over ``block_size``
columns). SparseGPT (Frantar & Alistarh, ICML 2023, Alg. 1) uses the same loop and zeroes the
weights with the smallest ``w^2 / U_jj^2`` before rounding them (joint pruning + quantization).

Grid: scales/zeros come from :func:`bitalloc.kernels.grid.fit_grid` (fp16 scale, integer zero point
in ``[0, 2^b - 1]``; the clip search weighted by ``diag(H)``, or minmax), computed for each group
from the current (already updated) weights when the group is reached, so the result is what a
packed checkpoint with those codes and scales dequantizes to. Per-channel formats and ``act_order``
use scales computed from the original weights before the loop (with ``act_order`` the groups stay
the plain consecutive column groups, "static groups"). Masks are exact: unstructured keeps a row-
wise quota of exactly ``pruned_per_row`` zeros per row (each block prunes, per row, the entries of
the block among the row's ``remaining quota`` lowest scores over all columns not fixed yet);
``N:M`` zeroes exactly ``M - N`` of every ``M`` consecutive inputs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..kernels.grid import fit_grid
from ..kernels.reference import dequantize
from .quantizer import Quantized

_DAMP_TRIES = 6  # damping grows x10 per failed Cholesky


@dataclass(frozen=True)
class Factor:
    """Upper Cholesky factor ``U`` of ``(H + damp I)^-1`` and the column order it belongs to."""

    u: torch.Tensor  # float32 [K, K]
    perm: torch.Tensor | None  # processing order (act_order) or None for natural order
    damp: float  # the damping that succeeded (absolute)
    diag: torch.Tensor  # float32 [K]: H's diagonal in the natural column order (grid importance)


def hessian_factor(h: torch.Tensor, percdamp: float, act_order: bool) -> Factor:
    """``U = chol((H' + damp I)^-1)^T`` with dead inputs handled, retrying at higher damping.

    ``H'`` is ``H`` with ``H_jj = 1`` for dead inputs (``H_jj = 0``: never active in the
    calibration data); such a column then neither receives nor spreads error and is simply
    rounded to nearest. ``damp = percdamp * mean(diag H')``, multiplied by 10 on each failure.
    """
    hd = h.detach().to(torch.float64).clone()
    h_diag = torch.diagonal(hd).float().clone()
    diag = torch.diagonal(hd)
    dead = diag == 0
    diag[dead] = 1.0
    perm = torch.argsort(diag, descending=True) if act_order else None
    if perm is not None:
        hd = hd[perm][:, perm]
    damp = percdamp * float(torch.diagonal(hd).mean())
    eye = torch.eye(hd.shape[0], dtype=hd.dtype, device=hd.device)
    with _single_thread(hd.device):
        for _ in range(_DAMP_TRIES):
            low, info = torch.linalg.cholesky_ex(hd + damp * eye)
            if int(info) == 0:
                up, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(low), upper=True)
                if int(info) == 0 and bool(torch.isfinite(up).all()):
                    return Factor(up.to(torch.float32), perm, damp, h_diag)
            damp *= 10.0
    raise ValueError(
        f"the Hessian is not positive definite even with damping {damp / 10:.3g}; "
        "raise `percdamp` or give more calibration data"
    )


def _quota_mask(w_rest: torch.Tensor, d_rest: torch.Tensor, quota: torch.Tensor, width: int):
    """Per row, the ``quota`` lowest ``w^2 / d^2`` of the remaining columns, cut to the block."""
    scores = w_rest.pow(2) / d_rest.pow(2).unsqueeze(0)
    order = torch.argsort(scores, dim=1, stable=True)
    take = torch.arange(w_rest.shape[1], device=w_rest.device).unsqueeze(0) < quota.unsqueeze(1)
    mask = torch.zeros_like(take).scatter_(1, order, take)
    return mask[:, :width]


def _nm_mask(w: torch.Tensor, d: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune ``m - n`` of every ``m`` columns of ``w`` by lowest ``w^2 / d^2`` (per row)."""
    rows, width = w.shape
    scores = (w.pow(2) / d.pow(2).unsqueeze(0)).reshape(rows, width // m, m)
    idx = torch.topk(scores, m - n, dim=-1, largest=False).indices
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(rows, width)


def _alignment(group: int | None, region: int | None, block_size: int) -> int:
    """Block width: a multiple of the group and N:M region sizes, at least ``block_size``."""
    step = math.lcm(group or 1, region or 1)
    return max(step, block_size // step * step)


def gptq_quantize(
    w: torch.Tensor,
    factor: Factor,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    *,
    float_kind: str | None = None,
    pruned_per_row: int = 0,
    n_m: tuple[int, int] | None = None,
    block_size: int = 128,
    search: bool = True,
) -> Quantized:
    """GPTQ (dense) or SparseGPT (``pruned_per_row > 0`` or ``n_m``) on ``w`` ``[N, K]``.

    ``bits=16`` keeps floats (rounded to ``float_kind`` for the error feedback); it is only
    useful with sparsity. Sparse formats need ``factor.perm is None`` (natural order).
    ``search``: fit each group's grid by the clip search weighted by ``diag(H)``
    (:func:`bitalloc.kernels.grid.fit_grid`), else minmax.
    """
    importance = factor.diag if search else None
    with _single_thread(w.device):
        return _gptq_loop(
            w,
            factor,
            bits,
            group_size,
            symmetric,
            float_kind,
            pruned_per_row,
            n_m,
            block_size,
            importance,
        )


@contextlib.contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread on CPU while the column loop runs (thousands of small ops per layer,
    which intra-op threads slowed down about 50x on a busy 2-core machine; the factorization of
    ``H`` measured faster single-threaded there too)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _gptq_loop(
    w: torch.Tensor,
    factor: Factor,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    float_kind: str | None,
    pruned_per_row: int,
    n_m: tuple[int, int] | None,
    block_size: int,
    importance: torch.Tensor | None,
) -> Quantized:
    rows, cols = w.shape
    quant = bits != 16
    sparse = n_m is not None or pruned_per_row > 0
    if sparse and factor.perm is not None:
        raise ValueError("sparse formats are processed in natural column order (no act_order)")
    if n_m is not None and cols % n_m[1]:
        raise ValueError(f"{n_m[0]}:{n_m[1]} sparsity needs in_features divisible by {n_m[1]}")
    gs = group_size if quant and group_size is not None else None
    if gs is not None and cols % gs:
        raise ValueError(f"in_features {cols} is not divisible by group_size {gs}")
    perm = factor.perm
    Wt = w.detach().to(torch.float32).t()  # [K, N]: one column of W is one contiguous row
    Wt = (Wt[perm] if perm is not None else Wt).contiguous()
    U, diag_u = factor.u, torch.diagonal(factor.u)
    n_groups = cols // gs if gs else 1
    scale = torch.empty(rows, n_groups, dtype=torch.float16, device=Wt.device)
    zero = None if symmetric else torch.empty(rows, n_groups, dtype=torch.int16, device=Wt.device)
    static = quant and (gs is None or perm is not None)
    if static:  # per-channel, or act_order's static groups: scales from the original weights
        scale, zero = fit_grid(w.detach().float(), bits, gs, symmetric, importance)
    mask = torch.zeros(cols, rows, dtype=torch.bool, device=Wt.device) if sparse else None
    quota = torch.full((rows,), pruned_per_row, dtype=torch.long, device=Wt.device)
    region = math.lcm(n_m[1], gs) if n_m is not None and gs else (n_m[1] if n_m else None)
    step = _alignment(gs, region, block_size)
    orig = perm.tolist() if perm is not None else range(cols)
    half = torch.bfloat16 if (float_kind or "bf16") == "bf16" else torch.float16
    grid = _Grid(scale, zero, bits, symmetric, importance, gs) if quant else None
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        W1, U1 = Wt[i1:i2].clone(), U[i1:i2, i1:i2]
        E1 = torch.zeros_like(W1)
        M1 = None
        if mask is not None and n_m is None:
            M1 = _quota_mask(Wt[i1:].t(), diag_u[i1:], quota, i2 - i1).t()
            quota -= M1.sum(dim=0)
        elif mask is not None:
            M1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            j = i1 + i
            if n_m is not None and region is not None and j % region == 0:
                cut = W1[i : i + region].t()
                M1[i : i + region] = _nm_mask(cut, diag_u[j : j + region], *n_m).t()
            if grid is not None and not static and j % gs == 0:
                wg = (
                    W1[i : i + gs] if M1 is None else W1[i : i + gs].masked_fill(M1[i : i + gs], 0)
                )
                grid.fit(wg.t(), orig[j] // gs)
            col = W1[i]
            q = grid.round(col, orig[j] // gs if gs else 0) if grid else col.to(half).float()
            if M1 is not None:
                q = q.masked_fill(M1[i], 0.0)
            err = (col - q) / U1[i, i]
            W1[i + 1 :].addr_(U1[i, i + 1 :], err, alpha=-1.0)
            W1[i] = q
            E1[i] = err
        Wt[i1:i2] = W1
        if mask is not None and M1 is not None:
            mask[i1:i2] = M1
        Wt[i2:].addmm_(U[i1:i2, i2:].t(), E1, alpha=-1.0)
    if perm is not None:
        inv = torch.argsort(perm)
        Wt = Wt[inv]
        mask = mask[inv] if mask is not None else None
    W = Wt.t().contiguous()
    keep = ~mask.t() if mask is not None else None
    if not quant:
        return Quantized(W.to(half).float(), None, None, None, keep)
    codes = encode(W, scale, zero)
    return Quantized(dequantize(codes, scale, zero, (rows, cols)), codes, scale, zero, keep)


class _Grid:
    """Current fp16 scales / integer zeros per group, and rounding onto that grid."""

    def __init__(
        self,
        scale: torch.Tensor,
        zero: torch.Tensor | None,
        bits: int,
        sym: bool,
        importance: torch.Tensor | None = None,
        group_size: int | None = None,
    ):
        self.scale, self.zero = scale, zero
        self.importance, self.group_size = importance, group_size
        self.qmax = (2 ** (bits - 1) - 1) if sym else (2**bits - 1)
        self.bits, self.sym = bits, sym
        self._cols: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def fit(self, wg: torch.Tensor, g: int) -> None:
        """Scale (and zero) of group ``g`` from its current weights ``wg`` ``[N, group]``."""
        imp = None
        if self.importance is not None and self.group_size is not None:
            gs = self.group_size
            imp = self.importance[g * gs : (g + 1) * gs]
        sg, zg = fit_grid(wg, self.bits, None, self.sym, imp)
        self.scale[:, g] = sg[:, 0]
        if self.zero is not None and zg is not None:
            self.zero[:, g] = zg[:, 0]
        self._cols.pop(g, None)

    def round(self, col: torch.Tensor, g: int) -> torch.Tensor:
        """Dequantized nearest grid point: ``(clamp(round(w/s) + z, 0, qmax) - z) * s``."""
        if g not in self._cols:
            s = self.scale[:, g].float()
            if self.zero is None:
                lo, hi = torch.full_like(s, -self.qmax - 1), torch.full_like(s, self.qmax)
            else:
                z = self.zero[:, g].float()
                lo, hi = -z, self.qmax - z
            self._cols[g] = (s, lo, hi)
        s, lo, hi = self._cols[g]
        return torch.clamp(torch.round(col / s), lo, hi) * s


def encode(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    """Codes of a weight that lies on the grid of ``scale``/``zero`` (``[N, G, group]`` int16)."""
    rows, groups = scale.shape
    g = w.reshape(rows, groups, -1) / scale.float().unsqueeze(-1)
    codes = torch.round(g) if zero is None else torch.round(g) + zero.float().unsqueeze(-1)
    return codes.to(torch.int16)
