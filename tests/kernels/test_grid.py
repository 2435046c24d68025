"""The grid fit: minmax is the data-free rule; the clip search never loses to it on the
weighted error it minimises; codes and scales pack bit-exactly."""

from __future__ import annotations

import pytest
import torch

from bitalloc.kernels import fit_grid, pack_weight, unpack_weight, weighted_error
from bitalloc.kernels.grid import decode, encode, grouped, quantize
from bitalloc.kernels.reference import fake_quantize

CASES = [(2, 32, False), (3, 64, False), (4, 32, True), (3, None, False), (8, 16, False)]


def heavy_tailed(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen) * 0.02
    outliers = torch.rand(rows, cols, generator=gen) < 0.01
    return torch.where(outliers, w * 20, w)


def act_importance(cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 100)
    return torch.randn(cols, generator=gen).exp().square()  # log-normal E[x^2]


def minmax_by_hand(w: torch.Tensor, bits: int, gs: int | None, sym: bool) -> torch.Tensor:
    g = grouped(w, gs)
    if sym:
        qmax = 2 ** (bits - 1) - 1
        s = (g.abs().amax(-1) / qmax).clamp(min=2**-24).half().float()
        q = torch.clamp(torch.round(g / s[..., None]), -qmax - 1, qmax)
        return (q * s[..., None]).reshape(w.shape)
    qmax = 2**bits - 1
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    s = ((hi - lo) / qmax).clamp(min=2**-24).half().float()
    z = torch.clamp(torch.round(-lo / s), 0, qmax)
    q = torch.clamp(torch.round(g / s[..., None]) + z[..., None], 0, qmax)
    return ((q - z[..., None]) * s[..., None]).reshape(w.shape)


@pytest.mark.parametrize(("bits", "gs", "sym"), CASES)
def test_minmax_without_importance_is_the_plain_range(bits, gs, sym) -> None:
    w = heavy_tailed(24, 64, 0)
    assert torch.equal(fake_quantize(w, bits, gs, sym), minmax_by_hand(w, bits, gs, sym))


@pytest.mark.parametrize(("bits", "gs", "sym"), CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_never_loses_to_minmax_on_weighted_error(bits, gs, sym, seed) -> None:
    w = heavy_tailed(32, 128, seed)
    imp = act_importance(128, seed)
    searched = fake_quantize(w, bits, gs, sym, importance=imp)
    minmax = fake_quantize(w, bits, gs, sym)
    err_s, err_m = weighted_error(w, searched, imp), weighted_error(w, minmax, imp)
    assert err_s <= err_m
    if bits <= 3:  # at low bits clipping outliers must actually help on heavy tails
        assert err_s < 0.9 * err_m
    # per group too (the search decides group by group)
    g, gi = grouped(w, gs), imp.reshape(1, *grouped(w, gs).shape[1:])
    per_s = ((grouped(searched, gs) - g).square() * gi).sum(-1)
    per_m = ((grouped(minmax, gs) - g).square() * gi).sum(-1)
    assert bool((per_s <= per_m * (1 + 1e-6)).all())


def test_search_on_real_layers_never_loses(tiny_llama, tiny_calib) -> None:
    from bitalloc.nn import input_moments

    names = [n for n, m in tiny_llama.named_modules() if isinstance(m, torch.nn.Linear)]
    moments = input_moments(tiny_llama, names, tiny_calib)
    for name in names:
        w = tiny_llama.get_submodule(name).weight.detach()
        imp = moments[name].mean_square
        for bits in (2, 3, 4):
            s = fake_quantize(w, bits, 32, importance=imp)
            m = fake_quantize(w, bits, 32)
            assert weighted_error(w, s, imp) <= weighted_error(w, m, imp), (name, bits)


def test_weighting_matters() -> None:
    """Important columns get finer rounding than with uniform weights."""
    w = heavy_tailed(16, 64, 3)
    imp = torch.ones(64)
    imp[:8] = 1e4
    weighted = fake_quantize(w, 3, 64, importance=imp)
    plain = fake_quantize(w, 3, 64, importance=torch.ones(64))
    head = lambda x: float((x[:, :8] - w[:, :8]).square().sum())  # noqa: E731
    assert head(weighted) <= head(plain)
    assert weighted_error(w, weighted, imp) <= weighted_error(w, plain, imp)


@pytest.mark.parametrize(("bits", "gs", "sym"), CASES)
def test_searched_codes_pack_bit_exactly(bits, gs, sym) -> None:
    w = heavy_tailed(12, 64, 4)
    imp = act_importance(64, 4)
    q, scale, zero = quantize(w, bits, gs, sym, imp)
    pw = pack_weight(w, bits, gs, sym, importance=imp)
    assert torch.equal(pw.scales, scale)
    assert torch.equal(unpack_weight(pw), decode(q, scale, zero).reshape(w.shape))
    # codes re-derived from the dequantized weight on the same grid are the same codes
    assert torch.equal(encode(decode(q, scale, zero), scale, zero, bits), q)
    lo = -(2 ** (bits - 1)) if sym else 0
    hi = 2 ** (bits - 1) - 1 if sym else 2**bits - 1
    assert int(q.min()) >= lo and int(q.max()) <= hi


def test_fit_grid_shapes_and_zero_point_range() -> None:
    w = heavy_tailed(8, 96, 5)
    scale, zero = fit_grid(w, 3, 32, importance=act_importance(96, 5))
    assert scale.dtype == torch.float16 and scale.shape == (8, 3)
    assert zero is not None and zero.dtype == torch.int16 and int(zero.max()) <= 7
    s_sym, z_sym = fit_grid(w, 3, 32, True, importance=act_importance(96, 5))
    assert z_sym is None and s_sym.shape == (8, 3)


def test_bad_importance_and_options_are_refused() -> None:
    w = heavy_tailed(4, 32, 6)
    with pytest.raises(ValueError, match="`importance` has 16 entries; the weight has 32"):
        fit_grid(w, 3, 32, importance=torch.ones(16))
    with pytest.raises(ValueError, match="finite and non-negative"):
        fit_grid(w, 3, 32, importance=torch.full((32,), float("nan")))
    with pytest.raises(ValueError, match="finite and non-negative"):
        fit_grid(w, 3, 32, importance=-torch.ones(32))
    with pytest.raises(ValueError, match="`steps`"):
        fit_grid(w, 3, 32, importance=torch.ones(32), steps=0)
    with pytest.raises(ValueError, match="`min_shrink`"):
        fit_grid(w, 3, 32, importance=torch.ones(32), min_shrink=0.0)


def test_all_zero_importance_is_plain_mse() -> None:
    w = heavy_tailed(8, 64, 7)
    zero = fake_quantize(w, 3, 32, importance=torch.zeros(64))
    ones = fake_quantize(w, 3, 32, importance=torch.ones(64))
    assert torch.equal(zero, ones)
