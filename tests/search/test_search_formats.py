"""QuantFormat: exact byte accounting by hand, keys, validation."""

from __future__ import annotations

import json
import math

import pytest

from bitalloc.search.formats import QuantFormat, parse_formats


@pytest.mark.parametrize(
    "key, shape, nbytes",
    [
        # codes + fp16 scales + bit-packed zero points
        ("int4-g128", (256, 256), 32768 + 512 * 2 + 256),  # 34048
        ("int3-g64-sym", (10, 192), 720 + 30 * 2),  # no zeros: 780
        ("int3-g64", (10, 192), 720 + 30 * 2 + 12),  # ceil(30*3/8) = 12 zero bytes
        ("int8-pc", (3, 5), 15 + 3 * 2 + 3),  # per-channel: 3 groups
        ("int8-pc-sym", (3, 5), 15 + 3 * 2),
        ("int4-pc", (3, 5), 8 + 3 * 2 + 2),  # ceil(60/8)=8, ceil(12/8)=2
        ("int5-g64", (1, 64), 40 + 2 + 1),
        ("int2-g4", (8, 4, 3, 3), 72 + 72 * 2 + 18),  # conv: in = 4*3*3 = 36
        ("bf16", (7, 3), 42),
        ("fp16", (7, 3), 42),
    ],
)
def test_nbytes_by_hand(key: str, shape: tuple[int, ...], nbytes: int) -> None:
    fmt = QuantFormat.parse(key)
    assert fmt.supports(shape)
    assert fmt.nbytes(shape) == nbytes
    assert fmt.bits_per_weight(shape) == 8 * nbytes / math.prod(shape)


def test_bits_per_weight_values() -> None:
    assert QuantFormat.parse("int4-g128").bits_per_weight((256, 256)) == 4.15625
    assert QuantFormat.parse("int3-g64-sym").bits_per_weight((10, 192)) == 3.25
    assert QuantFormat.parse("int8-pc").bits_per_weight((3, 5)) == 12.8
    assert QuantFormat.parse("bf16").bits_per_weight((64, 64)) == 16.0


def test_conv_group_not_dividing_in_features() -> None:
    fmt = QuantFormat.parse("int2-g32")
    shape = (8, 4, 3, 3)  # in_features 36 is not a multiple of 32
    assert fmt.supports(shape) is False
    with pytest.raises(ValueError, match="divisible by 32"):
        fmt.nbytes(shape)
    assert QuantFormat.parse("int2-pc").supports(shape)
    assert not QuantFormat.parse("int4-g64").supports((64,))  # 1-D weights are never searched


@pytest.mark.parametrize(
    "key, bits, group, sym",
    [
        ("int4-g128", 4, 128, False),
        ("int3-g64-sym", 3, 64, True),
        ("int8-pc", 8, None, False),
        ("int8-pc-sym", 8, None, True),
        ("int2-g32", 2, 32, False),
        ("bf16", 16, None, True),
        ("fp16", 16, None, True),
    ],
)
def test_parse_and_round_trip(key: str, bits: int, group: int | None, sym: bool) -> None:
    fmt = QuantFormat.parse(key)
    assert (fmt.bits, fmt.group_size, fmt.symmetric) == (bits, group, sym)
    assert fmt.key == key == str(fmt)
    assert QuantFormat.parse(fmt.key) == fmt
    assert QuantFormat.from_dict(fmt.to_dict()) == fmt
    assert QuantFormat.parse(fmt) is fmt


def test_parse_normalises_case_and_space() -> None:
    assert QuantFormat.parse("  INT4-G128 ").key == "int4-g128"
    assert QuantFormat.parse("BF16").float_kind == "bf16"
    assert QuantFormat.parse("bf16") != QuantFormat.parse("fp16")


@pytest.mark.parametrize(
    "key, match",
    [
        ("int9-g128", "`bits`"),
        ("int1-g64", "`bits`"),
        ("int4-g0", "`group_size`"),
        ("int4", "unknown format key"),
        ("int4-g128-asym", "unknown format key"),
        ("q7_k", "unknown format key"),  # q4_k is a ggml type (test_search_targets.py)
        ("", "unknown format key"),
        ("int4-gx", "unknown format key"),
    ],
)
def test_bad_keys(key: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QuantFormat.parse(key)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="`group_size` must be None"):
        QuantFormat(bits=16, group_size=64)
    with pytest.raises(ValueError, match="`float_kind`"):
        QuantFormat(bits=16, float_kind="fp8")
    with pytest.raises(ValueError, match="`float_kind` is only valid"):
        QuantFormat(bits=4, group_size=64, float_kind="bf16")
    with pytest.raises(ValueError, match="`group_size`"):
        QuantFormat(bits=4, group_size=-8)
    with pytest.raises(TypeError, match="format key must be a str"):
        QuantFormat.parse(4)  # type: ignore[arg-type]


def test_parse_formats() -> None:
    assert [f.key for f in parse_formats("int4-g128,int2-g128,int4-g128")] == [
        "int4-g128",
        "int2-g128",
    ]
    assert [f.key for f in parse_formats(["int8-pc", QuantFormat(bits=16)])] == ["int8-pc", "bf16"]
    with pytest.raises(ValueError, match="`formats` is empty"):
        parse_formats([])
    with pytest.raises(TypeError, match="`formats`"):
        parse_formats(5)


# ---------------------------------------------------------------------- sparse formats
@pytest.mark.parametrize(
    "key, shape, nbytes",
    [
        # unstructured: kept codes + 1-bit mask over numel + scales + zeros (as dense)
        # 10 rows x 192: floor(0.5*192)=96 zeros/row -> kept 960; codes ceil(960*3/8)=360,
        # mask ceil(1920/8)=240, 30 groups: scales 60, zeros ceil(90/8)=12
        ("int3-g64-s0.5", (10, 192), 360 + 240 + 60 + 12),
        # floor(0.57*100)=57 exactly (not 56): kept 3*43=129 -> ceil(129*4/8)=65, mask
        # ceil(300/8)=38, per-channel: 3 scales (6) + ceil(3*4/8)=2 zeros
        ("int4-pc-s0.57", (3, 100), 65 + 38 + 6 + 2),
        # 0.9 of 10 -> 9 zeros/row, kept 7; sym: no zeros
        ("int8-pc-sym-s0.9", (7, 10), 7 + 9 + 7 * 2),
        # 2:4: kept numel/2 = 32768 codes of 4 bits = 16384, mask 65536/8 = 8192,
        # 512 groups: 1024 scale bytes + 256 zero bytes
        ("int4-g128-s2:4", (256, 256), 16384 + 8192 + 1024 + 256),
        ("int3-g64-s2:4", (10, 192), 360 + 240 + 60 + 12),  # same kept count as s0.5
        ("int2-g4-s2:4", (8, 4, 3, 3), 36 + 36 + 72 * 2 + 18),  # conv: in = 36
        # floats: 2 bytes per kept weight + mask
        ("bf16-s2:4", (8, 16), 2 * 64 + 16),
        ("fp16-s0.75", (2, 10), 2 * 2 * 3 + 3),  # floor(7.5)=7 zeros/row -> 3 kept
    ],
)
def test_sparse_nbytes_by_hand(key: str, shape: tuple[int, ...], nbytes: int) -> None:
    fmt = QuantFormat.parse(key)
    assert fmt.is_sparse and fmt.supports(shape)
    assert fmt.nbytes(shape) == nbytes
    assert fmt.bits_per_weight(shape) == 8 * nbytes / math.prod(shape)


def test_two_four_bits_per_weight_is_b_over_2_plus_1() -> None:
    # algorithms.md 9.1: b/2 + 1 bits per weight before scales (sym, per-channel -> tiny)
    shape = (1, 4096)
    for bits in (4, 8):
        bpw = QuantFormat.parse(f"int{bits}-pc-sym-s2:4").bits_per_weight(shape)
        assert bpw == bits / 2 + 1 + 16 / 4096
    assert QuantFormat.parse("bf16-s2:4").bits_per_weight(shape) == 9.0


@pytest.mark.parametrize(
    "key, sparsity, n_m, dense",
    [
        ("int4-g128-s0.5", 0.5, None, "int4-g128"),
        ("int3-g64-s2:4", 0.5, (2, 4), "int3-g64"),
        ("int3-g64-sym-s2:4", 0.5, (2, 4), "int3-g64-sym"),
        ("int8-pc-s0.75", 0.75, None, "int8-pc"),
        ("bf16-s2:4", 0.5, (2, 4), "bf16"),
        ("fp16-s0.6", 0.6, None, "fp16"),
        ("int4-g32-s4:8", 0.5, (4, 8), "int4-g32"),
        ("int4-g32-s1:4", 0.75, (1, 4), "int4-g32"),
    ],
)
def test_sparse_parse_and_round_trip(key: str, sparsity: float, n_m, dense: str) -> None:
    fmt = QuantFormat.parse(key)
    assert (fmt.sparsity, fmt.n_m, fmt.dense.key) == (sparsity, n_m, dense)
    assert fmt.key == key and QuantFormat.parse(fmt.key) == fmt
    assert QuantFormat.from_dict(json.loads(json.dumps(fmt.to_dict()))) == fmt
    assert not fmt.dense.is_sparse and fmt.is_sparse


def test_sparse_constructor_normalises() -> None:
    assert QuantFormat(4, 128, n_m=(2, 4)) == QuantFormat(4, 128, sparsity=0.5, n_m=[2, 4])
    assert QuantFormat(4, 128, n_m=(2, 4)).key == "int4-g128-s2:4"
    assert QuantFormat(4, 128, sparsity=0.1 + 0.2).key == "int4-g128-s0.3"
    assert QuantFormat(4, 128, sparsity=0.5) != QuantFormat(4, 128, n_m=(2, 4))
    assert QuantFormat(4, 128, sparsity=0.0).key == "int4-g128"


@pytest.mark.parametrize(
    "key, match",
    [
        ("int4-g128-s0", "unstructured sparsity must be in \\(0, 1\\).*-s2:4"),
        ("int4-g128-s1.0", "unstructured sparsity must be in \\(0, 1\\)"),
        ("int4-g128-s2:2", "0 < N < M"),
        ("int4-g128-s0:4", "0 < N < M"),
        ("int4-g128-s5:4", "0 < N < M"),
        ("int4-g128-sx", "unknown format key.*'-s0.5'.*'-s2:4'"),
        ("int4-g128-s2:4-sym", "unknown format key"),
        ("bf17-s2:4", "unknown format key"),
    ],
)
def test_bad_sparse_keys(key: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QuantFormat.parse(key)


def test_bad_sparse_arguments() -> None:
    with pytest.raises(ValueError, match="`sparsity` must be a float in \\[0, 1\\)"):
        QuantFormat(4, 64, sparsity=1.0)
    with pytest.raises(ValueError, match="`sparsity`"):
        QuantFormat(4, 64, sparsity=-0.1)
    with pytest.raises(ValueError, match="contradicts `n_m` 2:4"):
        QuantFormat(4, 64, sparsity=0.6, n_m=(2, 4))
    with pytest.raises(ValueError, match="`n_m` must be a pair of ints"):
        QuantFormat(4, 64, n_m=(2.0, 4))  # type: ignore[arg-type]


def test_two_four_needs_in_features_divisible_by_four() -> None:
    fmt = QuantFormat.parse("int4-pc-s2:4")
    assert fmt.supports((8, 12)) and not fmt.supports((8, 30))
    assert "2:4 sparsity needs in_features divisible by 4, got 30" in str(
        fmt.unsupported_reason((8, 30))
    )
    assert QuantFormat.parse("int4-pc-s0.5").supports((8, 30))  # unstructured: any width
    with pytest.raises(ValueError, match="divisible by 4"):
        fmt.nbytes((8, 30))


def test_search_space_drops_two_four_for_odd_widths_with_a_reason() -> None:
    from torch import nn

    from bitalloc import SearchSpace

    model = nn.Sequential(nn.Linear(30, 8), nn.Linear(8, 8))
    space = SearchSpace.from_model(model, ["int4-pc-s2:4", "int4-pc"], exclude=())
    assert [u.allowed for u in space.units] == [("int4-pc",), ("int4-pc-s2:4", "int4-pc")]
    with pytest.raises(ValueError, match="'0'.*2:4 sparsity needs in_features divisible by 4"):
        SearchSpace.from_model(model, ["int4-pc-s2:4"], exclude=())
