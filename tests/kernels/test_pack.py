"""Bit packing: bit-exact against an independent bit-by-bit writer, and the packed weight."""

from __future__ import annotations

import math

import pytest
import torch

from bitalloc.kernels.pack import (
    PackedWeight,
    pack_bits,
    pack_weight,
    packed_nbytes,
    unpack_bits,
    unpack_weight,
)
from bitalloc.kernels.reference import dequantize, quantize
from bitalloc.search.formats import QuantFormat


def naive_pack(codes: list[int], bits: int) -> list[int]:
    """The layout spelled out one bit at a time: code i's bit j is stream bit i*bits+j, and
    stream bit p is bit p%8 of byte p//8."""
    out = [0] * math.ceil(len(codes) * bits / 8)
    for i, code in enumerate(codes):
        for j in range(bits):
            p = i * bits + j
            out[p // 8] |= ((code >> j) & 1) << (p % 8)
    return out


SHAPES = [(1,), (7,), (8,), (13, 11), (3, 5, 7)]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_pack_matches_bitwise_layout_and_round_trips(bits: int, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(bits * 100 + len(shape))
    codes = torch.randint(0, 2**bits, shape, generator=gen, dtype=torch.int16)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_nbytes(codes.numel(), bits)
    assert packed.tolist() == naive_pack(codes.reshape(-1).tolist(), bits)
    back = unpack_bits(packed, bits, codes.numel())
    assert back.dtype == torch.uint8
    assert torch.equal(back.long(), codes.reshape(-1).long())


def test_known_bytes_and_straddling_three_bit_codes() -> None:
    # 2-bit 1,2,3 -> 0b00_11_10_01; 3-bit 5,3,7 -> 0b1_11_011_101 split over two bytes
    assert pack_bits(torch.tensor([1, 2, 3]), 2).tolist() == [0b00111001]
    assert pack_bits(torch.tensor([5, 3, 7]), 3).tolist() == [0b11011101, 0b1]
    assert pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0b1101, 1]
    assert pack_bits(torch.tensor([0xA, 0x5]), 4).tolist() == [0x5A]


def test_extreme_codes_and_empty() -> None:
    for bits in range(1, 9):
        top = torch.full((13,), 2**bits - 1, dtype=torch.int32)
        packed = pack_bits(top, bits)
        used = 13 * bits
        assert sum(bin(b).count("1") for b in packed.tolist()) == used  # padding bits stay 0
        assert torch.equal(unpack_bits(packed, bits, 13).long(), top.long())
    assert pack_bits(torch.zeros(0, dtype=torch.uint8), 3).numel() == 0
    assert unpack_bits(torch.zeros(0, dtype=torch.uint8), 3, 0).numel() == 0


def test_bad_pack_arguments_name_the_argument() -> None:
    codes = torch.tensor([0, 1, 2])
    for bad in (0, 9, 3.0, True):
        with pytest.raises(ValueError, match="`bits`"):
            pack_bits(codes, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`codes`"):
        pack_bits(torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match="`codes`"):
        pack_bits(torch.tensor([-1, 0]), 2)
    with pytest.raises(ValueError, match="`codes`"):
        pack_bits(torch.tensor([0.0, 1.0]), 2)
    assert unpack_bits(torch.zeros(3, dtype=torch.uint8), 3, 7).numel() == 7  # 21 bits: 3 B
    with pytest.raises(ValueError, match="`packed`"):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), 3, 7)
    with pytest.raises(ValueError, match="`packed`"):
        unpack_bits(torch.zeros(3, dtype=torch.int32), 3, 7)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("group_size", [32, 64, None])
@pytest.mark.parametrize("symmetric", [False, True])
def test_pack_weight_dequantizes_exactly_like_reference(
    bits: int, group_size: int | None, symmetric: bool
) -> None:
    w = torch.randn(13, 128, generator=torch.Generator().manual_seed(bits)) * 0.05
    pw = pack_weight(w, bits, group_size, symmetric)
    q, scale, zero = quantize(w, bits, group_size, symmetric)
    assert torch.equal(unpack_weight(pw), dequantize(q, scale, zero, w.shape))
    assert torch.equal(pw.scales, scale)
    assert pw.symmetric == symmetric and pw.shape == (13, 128)
    # the stored bytes are exactly what the search's accounting charges
    assert pw.nbytes == QuantFormat(bits, group_size, symmetric).nbytes((13, 128))
    codes = unpack_bits(pw.codes, bits, w.numel()).long()
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1


def test_symmetric_codes_are_offset_by_half_range() -> None:
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    pw = pack_weight(w, 3, 32, symmetric=True)
    q, _, _ = quantize(w, 3, 32, symmetric=True)
    stored = unpack_bits(pw.codes, 3, w.numel()).long()
    assert torch.equal(stored, q.reshape(-1).long() + 4)


def test_conv_shape_and_dtype_and_device_copy() -> None:
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    pw = pack_weight(w, 4, None)
    q, scale, zero = quantize(w, 4, None)
    dense = unpack_weight(pw, torch.float16)
    assert dense.shape == w.shape and dense.dtype == torch.float16
    assert torch.equal(dense, dequantize(q, scale, zero, w.shape, torch.float16))
    assert torch.equal(unpack_weight(pw.to("cpu")), unpack_weight(pw))


def test_packed_weight_rejects_inconsistent_fields() -> None:
    pw = pack_weight(torch.randn(8, 64), 4, 32)
    with pytest.raises(ValueError, match="`group_size`"):
        PackedWeight(pw.codes, pw.scales, pw.zeros, 4, 48, pw.shape)
    with pytest.raises(ValueError, match="`codes`"):
        PackedWeight(pw.codes[:-1], pw.scales, pw.zeros, 4, 32, pw.shape)
    with pytest.raises(ValueError, match="`scales`"):
        PackedWeight(pw.codes, pw.scales.float(), pw.zeros, 4, 32, pw.shape)
    with pytest.raises(ValueError, match="`zeros`"):
        PackedWeight(pw.codes, pw.scales, pw.zeros[:-1], 4, 32, pw.shape)
    with pytest.raises(ValueError, match="`bits`"):
        PackedWeight(pw.codes, pw.scales, pw.zeros, 1, 32, pw.shape)
    with pytest.raises(ValueError, match="not divisible"):
        pack_weight(torch.randn(8, 40), 4, 32)
