"""QuantFormat: exact byte accounting by hand, keys, validation."""

from __future__ import annotations

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
        ("q4_k", "unknown format key"),
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
