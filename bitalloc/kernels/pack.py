"""Bit packing of integer codes and the packed-weight container.

Layout (fixed; ``QuantFormat.nbytes`` counts exactly these bytes):

- codes: the unsigned codes ``0..2^b-1`` of a weight ``[N, K, ...]`` in row-major order form
  ONE flat LSB-first bitstream: code ``i`` occupies stream bits ``i*b .. i*b+b-1`` (its least
  significant bit first) and stream bit ``p`` is bit ``p % 8`` of byte ``p // 8``. The stream
  is stored as ``uint8[ceil(numel*b/8)]``; the unused high bits of the last byte are zero.
  Widths 3, 5, 6, 7 straddle byte boundaries; ``b = 1`` is a bitmask.
- scales: fp16 ``[N, n_groups]`` with ``n_groups = K // group_size`` (one group per row when
  ``group_size`` is ``None``, i.e. per-channel).
- zeros (asymmetric only): the integer zero points ``[N, n_groups]`` packed the same way at the
  same width. Symmetric codes store ``q + 2^(b-1)`` for the signed reference codes
  ``q in [-2^(b-1), 2^(b-1)-1]``, i.e. an implicit zero point of ``2^(b-1)``.

Dequantized weight: ``w = (code - zero) * scale`` (fp32), bit-for-bit equal to
:func:`bitalloc.kernels.reference.dequantize`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .reference import dequantize, quantize

PACK_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _word_dtype(bits: int) -> torch.dtype:
    """Integer type holding 8 codes of ``bits`` bits (int32 for 3-bit, int64 above)."""
    return torch.int32 if 8 * bits < 32 else torch.int64


def _check_bits(bits: int, valid: tuple[int, ...] = PACK_BITS) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in valid:
        raise ValueError(f"`bits` must be one of {valid}, got {bits!r}")


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes of the packed bitstream for ``numel`` codes of ``bits`` bits: ``ceil(numel*b/8)``."""
    return math.ceil(numel * bits / 8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integer codes into a flat LSB-first bitstream.

    Widths dividing 8 put ``8/b`` whole codes in a byte: ``byte = sum_j code_j << (j*b)``.
    Otherwise eight codes of ``b`` bits fill exactly ``b`` bytes: each block of 8 is combined
    into one integer word ``sum_j code_j << (j*b)`` whose low ``b`` bytes are emitted
    little-endian; the padding bytes past ``ceil(numel*b/8)`` are cut.

    Args:
        codes: integer tensor of any shape (read in row-major order), values in ``[0, 2^b-1]``.
        bits: code width, 1..8.

    Returns:
        ``uint8[ceil(numel*bits/8)]`` on the device of ``codes``.
    """
    _check_bits(bits)
    if not isinstance(codes, torch.Tensor) or codes.dtype not in _INT_DTYPES:
        got = getattr(codes, "dtype", type(codes).__name__)
        raise ValueError(f"`codes` must be an integer tensor, got {got}")
    flat = codes.reshape(-1)
    n = flat.numel()
    if n and (int(flat.min()) < 0 or int(flat.max()) > 2**bits - 1):
        raise ValueError(f"`codes` must lie in [0, {2**bits - 1}] for bits={bits}")
    if 8 % bits == 0:  # whole codes per byte: one shift-sum over 8/bits slots
        per = 8 // bits
        padded = torch.zeros(math.ceil(n / per) * per, dtype=torch.uint8, device=flat.device)
        padded[:n] = flat
        slots = padded.view(-1, per)
        packed = slots[:, 0].clone()
        for j in range(1, per):
            packed |= slots[:, j] << (j * bits)
        return packed
    blocks = math.ceil(n / 8)
    padded = torch.zeros(blocks * 8, dtype=_word_dtype(bits), device=flat.device)
    padded[:n] = flat
    padded = padded.view(blocks, 8)
    word = torch.zeros(blocks, dtype=_word_dtype(bits), device=flat.device)
    for j in range(8):  # 8 code slots per word (vectorised over all blocks)
        word |= padded[:, j] << (j * bits)
    out = torch.empty(blocks, bits, dtype=torch.uint8, device=flat.device)
    for i in range(bits):
        out[:, i] = (word >> (8 * i)) & 0xFF
    return out.reshape(-1)[: packed_nbytes(n, bits)].clone()


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``uint8[numel]`` codes from the flat bitstream."""
    _check_bits(bits)
    if not isinstance(numel, int) or numel < 0:
        raise ValueError(f"`numel` must be a non-negative int, got {numel!r}")
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError("`packed` must be a 1-D uint8 tensor")
    want = packed_nbytes(numel, bits)
    if packed.numel() != want:
        raise ValueError(
            f"`packed` has {packed.numel()} bytes; {numel} codes of {bits} bits need {want}"
        )
    mask = 2**bits - 1
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.int32, device=packed.device) * bits
        codes = (packed.to(torch.int32).unsqueeze(1) >> shifts) & mask
        return codes.to(torch.uint8).reshape(-1)[:numel].clone()
    blocks = math.ceil(numel / 8)
    buf = torch.zeros(blocks * bits, dtype=_word_dtype(bits), device=packed.device)
    buf[:want] = packed
    buf = buf.view(blocks, bits)
    word = torch.zeros(blocks, dtype=_word_dtype(bits), device=packed.device)
    for i in range(bits):
        word |= buf[:, i] << (8 * i)
    out = torch.empty(blocks, 8, dtype=torch.uint8, device=packed.device)
    for j in range(8):
        out[:, j] = (word >> (j * bits)) & mask
    return out.reshape(-1)[:numel].clone()


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A group-quantized weight in the packed storage layout (see the module docstring).

    Attributes:
        codes: ``uint8[ceil(numel*bits/8)]`` bitstream of the unsigned codes.
        scales: fp16 ``[N, n_groups]``.
        zeros: ``uint8[ceil(N*n_groups*bits/8)]`` packed zero points, or ``None`` (symmetric).
        bits: code width 2..8.
        group_size: columns per group, ``None`` = per-channel.
        shape: the dense weight shape ``(N, K, ...)``.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    bits: int
    group_size: int | None
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_bits(self.bits, tuple(range(2, 9)))
        if len(self.shape) < 2:
            raise ValueError(f"`shape` must be (out_features, in_features, ...), got {self.shape}")
        rows, cols = self.out_features, self.in_features
        if self.group_size is not None and (self.group_size <= 0 or cols % self.group_size):
            raise ValueError(
                f"`group_size` {self.group_size} must be positive and divide in_features {cols}"
            )
        if self.codes.dtype != torch.uint8 or self.codes.numel() != packed_nbytes(
            rows * cols, self.bits
        ):
            raise ValueError("`codes` must be uint8 with ceil(numel*bits/8) bytes")
        if self.scales.dtype != torch.float16 or tuple(self.scales.shape) != (rows, self.n_groups):
            raise ValueError(f"`scales` must be fp16 of shape {(rows, self.n_groups)}")
        if self.zeros is not None and (
            self.zeros.dtype != torch.uint8
            or self.zeros.numel() != packed_nbytes(rows * self.n_groups, self.bits)
        ):
            raise ValueError("`zeros` must be uint8 with ceil(N*n_groups*bits/8) bytes or None")

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def n_groups(self) -> int:
        """Groups per row (1 for per-channel)."""
        return 1 if self.group_size is None else self.in_features // self.group_size

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    @property
    def nbytes(self) -> int:
        """Stored bytes: codes + fp16 scales + packed zeros (equals ``QuantFormat.nbytes``)."""
        zeros = 0 if self.zeros is None else self.zeros.numel()
        return self.codes.numel() + 2 * self.scales.numel() + zeros

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device: torch.device | str) -> PackedWeight:
        """A copy with every tensor on ``device``."""
        zeros = None if self.zeros is None else self.zeros.to(device)
        return PackedWeight(
            self.codes.to(device),
            self.scales.to(device),
            zeros,
            self.bits,
            self.group_size,
            self.shape,
        )


def pack_weight(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool = False,
    importance: torch.Tensor | None = None,
) -> PackedWeight:
    """Quantize ``w`` (:func:`reference.quantize`: minmax, or the clip search when
    ``importance`` is given) and pack it."""
    _check_bits(bits, tuple(range(2, 9)))
    q, scale, zero = quantize(w, bits, group_size, symmetric, importance)
    codes = q + 2 ** (bits - 1) if symmetric else q
    zeros = None if zero is None else pack_bits(zero, bits)
    return PackedWeight(pack_bits(codes, bits), scale, zeros, bits, group_size, tuple(w.shape))


def unpack_codes(pw: PackedWeight) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference-form ``(q, zero)``: int16 ``[N, G, group]`` codes (signed when symmetric)."""
    rows, groups = pw.out_features, pw.n_groups
    q = unpack_bits(pw.codes, pw.bits, rows * pw.in_features).to(torch.int16)
    q = q.view(rows, groups, -1)
    if pw.zeros is None:
        return q - 2 ** (pw.bits - 1), None
    zero = unpack_bits(pw.zeros, pw.bits, rows * groups).to(torch.int16).view(rows, groups)
    return q, zero


def unpack_weight(pw: PackedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense dequantized weight of ``pw.shape``, equal to :func:`reference.dequantize`."""
    q, zero = unpack_codes(pw)
    return dequantize(q, pw.scales, zero, pw.shape, dtype)
