"""Pruning masks: exact zero counts, N:M validity, Wanda scores, sparse fake-quant."""

from __future__ import annotations

import pytest
import torch

from bitalloc.kernels.reference import fake_quantize
from bitalloc.kernels.sparsity import (
    fake_quantize_sparse,
    n_pruned,
    prune_mask,
    satisfies_n_m,
    wanda_scores,
)
from bitalloc.search.formats import QuantFormat


def _w(rows: int = 16, cols: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sparsity", [0.5, 0.57, 0.7, 0.9, 0.33])
@pytest.mark.parametrize("cols", [64, 100, 30])
def test_unstructured_mask_has_exact_zeros_per_row(sparsity: float, cols: int) -> None:
    w = _w(cols=cols)
    keep = prune_mask(w, sparsity)
    assert keep.dtype == torch.bool and keep.shape == w.shape
    zeros = (~keep).sum(dim=1)
    expected = QuantFormat(4, None, sparsity=sparsity).pruned_per_row(cols)
    assert n_pruned(sparsity, cols) == expected
    assert (zeros == expected).all()
    # magnitude: every pruned weight is no larger than every kept weight of its row
    a = w.abs()
    for r in range(w.shape[0]):
        assert a[r][~keep[r]].max() <= a[r][keep[r]].min()


def test_exact_floor_on_decimal_sparsity() -> None:
    assert 0.57 * 100 < 57  # float product rounds below 57
    assert n_pruned(0.57, 100) == 57
    assert n_pruned(0.5, 7) == 3 and n_pruned(0.0, 10) == 0


@pytest.mark.parametrize("n_m", [(2, 4), (1, 4), (4, 8)])
def test_n_m_mask_is_valid(n_m: tuple[int, int]) -> None:
    n, m = n_m
    w = _w(cols=64)
    keep = prune_mask(w, n_m=n_m)
    blocks = keep.reshape(16, -1, m).sum(dim=-1)
    assert (blocks == n).all()
    assert satisfies_n_m(keep, n, m) and satisfies_n_m(w * keep, n, m)
    if n < 2:
        assert not satisfies_n_m(w, n, m)
    # the kept ones are the largest of every block
    a = w.abs().reshape(16, -1, m)
    kb = keep.reshape(16, -1, m)
    assert (a.masked_fill(~kb, float("inf")).amin(-1) >= a.masked_fill(kb, -1.0).amax(-1)).all()


def test_satisfies_n_m_rejects_dense_and_bad_widths() -> None:
    w = _w(cols=64)
    assert not satisfies_n_m(w, 2, 4)
    assert not satisfies_n_m(torch.ones(2, 6), 2, 4)  # 6 % 4 != 0
    bad = prune_mask(w, n_m=(2, 4)).clone()
    bad[0, 0:4] = True
    assert not satisfies_n_m(bad, 2, 4)


def test_two_four_needs_width_multiple_of_four() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        prune_mask(_w(cols=30), n_m=(2, 4))
    with pytest.raises(ValueError, match="0 < N < M"):
        prune_mask(_w(), n_m=(4, 4))


def test_wanda_scores_change_the_mask() -> None:
    w = _w(rows=4, cols=8)
    norms = torch.ones(8)
    norms[0] = 1e6  # a huge input feature: column 0 must be kept everywhere
    scores = wanda_scores(w, norms)
    assert torch.allclose(scores, w.abs() * norms)
    keep = prune_mask(w, 0.75, act_norms=norms)
    assert keep[:, 0].all()
    assert torch.equal(keep, prune_mask(w, 0.75, scores=scores))
    with pytest.raises(ValueError, match="`act_norms` has 7 entries"):
        wanda_scores(w, torch.ones(7))
    with pytest.raises(ValueError, match="`scores` shape"):
        prune_mask(w, 0.5, scores=torch.ones(3, 8))


def test_masks_are_deterministic_on_ties() -> None:
    w = torch.ones(3, 8)
    assert torch.equal(prune_mask(w, 0.5), prune_mask(w.clone(), 0.5))
    assert (~prune_mask(w, 0.5)).sum() == 12


@pytest.mark.parametrize("bits, group, sym", [(4, 32, False), (3, 16, True), (8, None, False)])
def test_sparse_fake_quantize(bits: int, group: int | None, sym: bool) -> None:
    w = _w(cols=64)
    keep = prune_mask(w, n_m=(2, 4))
    q = fake_quantize_sparse(w, bits, group, sym, n_m=(2, 4))
    assert (q[~keep] == 0).all()
    assert torch.equal(q, fake_quantize(w * keep, bits, group, sym) * keep)
    # dense path is the plain reference
    assert torch.equal(
        fake_quantize_sparse(w, bits, group, sym), fake_quantize(w, bits, group, sym)
    )
    # bf16 with a mask: pruned exactly, kept rounded to bf16
    f = fake_quantize_sparse(w, 16, None, float_kind="bf16", sparsity=0.5)
    k = prune_mask(w, 0.5)
    assert torch.equal(f, torch.where(k, w.bfloat16().float(), torch.zeros(())))
