"""Pruning masks (unstructured and N:M) and sparse fake-quantization, pure torch.

A weight ``w`` of shape ``[N, K, ...]`` is viewed as ``[N, K']`` (``K' = prod(shape[1:])``), as
in :mod:`bitalloc.kernels.reference`. Masks are boolean KEEP-masks of ``w``'s shape.

- unstructured ``s``: in every output row the ``floor(s * K')`` lowest-score weights are pruned
  (comparison per output row, as Wanda: Sun et al., arXiv 2306.11695, section 3).
- ``N:M``: in every block of ``M`` consecutive input channels of a row the ``M - N``
  lowest-score weights are pruned (2:4 semi-structured sparsity, NVIDIA Ampere).
- scores: magnitude ``|W_ij|`` by default; Wanda ``S_ij = |W_ij| * ||X_j||_2`` when the L2
  norms of the input features over the calibration tokens are given.

Ties are broken by column index (stable sort), so masks are deterministic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from .reference import fake_quantize


def n_pruned(sparsity: float, cols: int) -> int:
    """Zeros per row, ``floor(sparsity * cols)`` computed exactly on the decimal ``sparsity``
    (``0.57 * 100`` gives 57, not 56)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1), got {sparsity!r}")
    return math.floor(Fraction(repr(float(sparsity))) * cols)


def wanda_scores(w: torch.Tensor, act_norms: torch.Tensor) -> torch.Tensor:
    """Wanda importance ``|W_ij| * ||X_j||_2`` (float32, shape of ``w``).

    ``act_norms`` holds the L2 norm of every input feature over the calibration tokens,
    ``[K']`` for the flattened input dimension.
    """
    rows = w.shape[0]
    flat = w.detach().float().reshape(rows, -1)
    norms = act_norms.detach().float().reshape(-1).to(flat.device)
    if norms.numel() != flat.shape[1]:
        raise ValueError(
            f"`act_norms` has {norms.numel()} entries; the weight has {flat.shape[1]} inputs"
        )
    return (flat.abs() * norms.unsqueeze(0)).reshape(w.shape)


def prune_mask(
    w: torch.Tensor,
    sparsity: float = 0.0,
    n_m: tuple[int, int] | None = None,
    scores: torch.Tensor | None = None,
    act_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean keep-mask of ``w``'s shape pruning the lowest scores per row (or per N:M block).

    Args:
        w: weight ``[N, K, ...]``.
        sparsity: fraction of each row to prune (exactly ``floor(sparsity * K')`` zeros per
            row); ignored when ``n_m`` is given.
        n_m: ``(N, M)``: keep the ``N`` highest scores of every ``M`` consecutive inputs.
        scores: importance of every weight (shape of ``w``); default ``|w|``, or Wanda scores
            when ``act_norms`` is given.
        act_norms: per-input-feature activation L2 norms ``[K']`` (Wanda).
    """
    rows = w.shape[0]
    if scores is None:
        scores = wanda_scores(w, act_norms) if act_norms is not None else w.detach().abs()
    if tuple(scores.shape) != tuple(w.shape):
        raise ValueError(f"`scores` shape {tuple(scores.shape)} != weight shape {tuple(w.shape)}")
    s = scores.detach().float().reshape(rows, -1)
    cols = s.shape[1]
    keep = torch.ones_like(s, dtype=torch.bool)
    if n_m is not None:
        n, m = (int(v) for v in n_m)
        if not 0 < n < m:
            raise ValueError(f"`n_m` needs 0 < N < M, got {n_m!r}")
        if cols % m:
            raise ValueError(f"{n}:{m} sparsity needs in_features divisible by {m}, got {cols}")
        blocks = s.reshape(rows, cols // m, m)
        order = torch.argsort(blocks, dim=-1, stable=True)[..., : m - n]
        kb = keep.reshape(rows, cols // m, m)
        kb.scatter_(-1, order, False)
        return kb.reshape(w.shape)
    k = n_pruned(sparsity, cols)
    if k:
        order = torch.argsort(s, dim=-1, stable=True)[:, :k]
        keep.scatter_(-1, order, False)
    return keep.reshape(w.shape)


def satisfies_n_m(w: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every ``m`` consecutive inputs of every row hold at most ``n`` non-zeros
    (``w`` a weight or a keep-mask; ``in_features % m`` must be 0, else False)."""
    flat = w.detach().reshape(w.shape[0], -1)
    if flat.shape[1] % m:
        return False
    nonzero = (flat != 0).reshape(flat.shape[0], -1, m).sum(dim=-1)
    return bool((nonzero <= n).all())


def fake_quantize_sparse(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool = False,
    float_kind: str | None = None,
    sparsity: float = 0.0,
    n_m: tuple[int, int] | None = None,
    mask: torch.Tensor | None = None,
    act_norms: torch.Tensor | None = None,
    importance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prune then quantize-dequantize the kept weights (same shape and dtype as ``w``).

    Scales are computed from the pruned weight (pruned entries count as 0, which the grid
    always holds exactly), and pruned entries stay exactly 0. ``mask`` overrides the
    magnitude/Wanda choice; ``importance`` selects the clip-searched grid
    (:func:`bitalloc.kernels.grid.fit_grid`). Dense (``sparsity == 0`` and no ``n_m``) is
    :func:`~bitalloc.kernels.reference.fake_quantize`.
    """
    if mask is None and not sparsity and n_m is None:
        return fake_quantize(w, bits, group_size, symmetric, float_kind, importance)
    if mask is None:
        mask = prune_mask(w, sparsity, n_m, act_norms=act_norms)
    keep = mask.to(w.device)
    pruned = torch.where(keep, w.detach(), torch.zeros((), dtype=w.dtype, device=w.device))
    q = fake_quantize(pruned, bits, group_size, symmetric, float_kind, importance)
    return torch.where(keep, q, torch.zeros((), dtype=q.dtype, device=q.device))
