"""Reference quantizer: grid properties, exactness, SQNR per bit width."""

from __future__ import annotations

import pytest
import torch

from bitalloc.kernels import dequantize, fake_quantize, quantize


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - approx).pow(2).sum()))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_codes_in_range_and_levels_per_group(bits: int, symmetric: bool) -> None:
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(bits))
    q, scale, zero = quantize(w, bits, 32, symmetric)
    assert q.shape == (16, 4, 32) and scale.dtype == torch.float16 and scale.shape == (16, 4)
    if symmetric:
        assert zero is None
        assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    else:
        assert zero is not None and q.min() >= 0 and q.max() <= 2**bits - 1
        assert zero.min() >= 0 and zero.max() <= 2**bits - 1
    w_hat = fake_quantize(w, bits, 32, symmetric)
    # each group holds at most 2^bits distinct values
    groups = w_hat.reshape(16, 4, 32)
    assert max(len(torch.unique(g)) for g in groups.reshape(-1, 32)) <= 2**bits


@pytest.mark.parametrize(("bits", "min_db"), [(2, 5.0), (3, 12.0), (4, 18.0), (8, 40.0)])
def test_sqnr_grows_with_bits(bits: int, min_db: float) -> None:
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    assert sqnr_db(w, fake_quantize(w, bits, 64)) > min_db


def test_dequantize_inverts_quantize_exactly() -> None:
    w = torch.randn(8, 64)
    q, scale, zero = quantize(w, 4, 16)
    manual = ((q.float() - zero.float().unsqueeze(-1)) * scale.float().unsqueeze(-1)).reshape(
        8, 64
    )
    assert torch.equal(dequantize(q, scale, zero, w.shape), manual)
    assert torch.equal(fake_quantize(w, 4, 16), manual)


def test_per_channel_and_conv_shapes() -> None:
    w = torch.randn(6, 4, 3, 3)
    out = fake_quantize(w, 8, None)
    assert out.shape == w.shape and sqnr_db(w, out) > 35
    with pytest.raises(ValueError, match="not divisible"):
        quantize(torch.randn(4, 36), 4, 32)


def test_float_formats_round_trip() -> None:
    w = torch.randn(4, 8)
    assert torch.equal(fake_quantize(w, 16, None, float_kind="bf16"), w.bfloat16().float())
    assert torch.equal(fake_quantize(w, 16, None, float_kind="fp16"), w.half().float())


def test_constant_group_has_no_nan() -> None:
    w = torch.zeros(2, 32)
    assert torch.equal(fake_quantize(w, 3, 32), w)
    assert torch.isfinite(fake_quantize(torch.full((2, 32), 0.7), 2, 32)).all()
