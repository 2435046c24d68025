"""Storage formats a unit can take, with exact memory accounting.

A :class:`QuantFormat` is an integer grid with ``bits`` per code, one fp16 scale per group of
``group_size`` consecutive input channels of a row (``None`` = one group per output row, i.e.
per-channel), and, when asymmetric, one ``bits``-wide integer zero point per group. ``bits=16``
is an unquantized 16-bit float (``bf16``/``fp16``).

Storage layout that :meth:`QuantFormat.nbytes` counts exactly (and that a packed backend writes):

- codes: ``numel`` codes of ``bits`` bits, bit-packed contiguously -> ``ceil(numel*bits/8)``
- scales: ``n_groups`` fp16 values -> ``2 * n_groups``
- zeros (asymmetric only): ``n_groups`` codes of ``bits`` bits, bit-packed
  -> ``ceil(n_groups*bits/8)``

Sparse formats (``sparsity`` > 0) store codes only for the kept weights plus a 1-bit keep-mask
over all ``numel`` positions (scales and zeros as dense):

- unstructured ``s``: every output row has exactly ``floor(s * in_features)`` zeros, so
  ``kept = rows * (in_features - floor(s * in_features))``
- semi-structured ``N:M`` (``n_m``): ``N`` kept in every ``M`` consecutive inputs,
  ``kept = numel * N / M``; needs ``in_features % M == 0``. For 2:4 the hardware metadata (a
  2-bit index per kept weight) is exactly ``numel`` bits, the size of the bitmask.
- bytes: ``ceil(kept*bits/8)`` codes + ``ceil(numel/8)`` mask + scales + zeros
  (16-bit floats: ``2*kept + ceil(numel/8)``)

Storage per weight of 2:4 with b-bit codes: ``b/2 + 1`` bits before scales (algorithms.md 9.1).

Keys: ``int4-g128`` (asymmetric, group 128), ``int4-g128-sym``, ``int8-pc`` (per-channel),
``bf16``, ``fp16``; sparse: ``int4-g128-s0.5`` (unstructured 50%), ``int3-g64-sym-s2:4``,
``bf16-s2:4``.

ggml types (llama.cpp's own block layouts, built by the ``ggml`` backend with ggml's quantizer):
``q2_k`` .. ``q6_k`` (super-blocks of 256 weights), ``q4_0``/``q4_1``/``q5_0``/``q5_1``/``q8_0``/
``iq4_nl`` (blocks of 32), ``iq4_xs`` (256). :data:`GGML_TYPES` gives each its nominal code
bits, block and bytes per block (``Q4_K``: 144 bytes per 256 weights); a row must be a whole
number of blocks. ``bits`` is the nominal code width, ``group_size`` the block and
``symmetric`` whether the block has no min/offset.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

SCALE_BYTES = 2  # scales are stored as fp16
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
FLOAT_KINDS = ("bf16", "fp16")
_KEY = re.compile(r"^int(?P<bits>\d+)-(?:g(?P<group>\d+)|(?P<pc>pc))(?P<sym>-sym)?$")
_SPARSE = re.compile(r"^(?P<base>.+?)-s(?:(?P<n>\d+):(?P<m>\d+)|(?P<s>\d*\.\d+|\d+))$")
SPARSITY_DECIMALS = 4  # unstructured sparsity is kept to 4 decimals so keys round-trip


@dataclass(frozen=True, slots=True)
class GgmlType:
    """A ggml block layout: ``block`` weights in ``block_bytes`` bytes (gguf-py's
    ``GGML_QUANT_SIZES``)."""

    bits: int
    block: int
    block_bytes: int
    symmetric: bool


GGML_TYPES = {  # ggml type name (lower case) -> layout; llama.cpp ggml/src/ggml-common.h
    "q2_k": GgmlType(2, 256, 84, False),
    "q3_k": GgmlType(3, 256, 110, True),
    "q4_k": GgmlType(4, 256, 144, False),
    "q5_k": GgmlType(5, 256, 176, False),
    "q6_k": GgmlType(6, 256, 210, True),
    "q4_0": GgmlType(4, 32, 18, True),
    "q4_1": GgmlType(4, 32, 20, False),
    "q5_0": GgmlType(5, 32, 22, True),
    "q5_1": GgmlType(5, 32, 24, False),
    "q8_0": GgmlType(8, 32, 34, True),
    "iq4_nl": GgmlType(4, 32, 18, True),
    "iq4_xs": GgmlType(4, 256, 136, True),
}


@dataclass(frozen=True, slots=True, order=False)
class QuantFormat:
    """One storage format: integer bits with group-wise scales, or a 16-bit float; optionally
    sparse (unstructured or N:M).

    Args:
        bits: code width, 2..8, or 16 for an unquantized float format.
        group_size: input channels sharing one scale (and zero); ``None`` = per output channel.
            Ignored (must be ``None``) for 16-bit floats.
        symmetric: symmetric grid without zero point (``-sym`` in the key).
        float_kind: ``"bf16"`` or ``"fp16"`` for ``bits=16``; ``None`` otherwise.
        sparsity: fraction of zero weights per output row, in ``[0, 1)`` (0 = dense; typical
            unstructured values 0.5..0.9); kept to 4 decimals. Derived from ``n_m`` when given.
        n_m: semi-structured ``(N, M)``: at most ``N`` non-zeros in every ``M`` consecutive
            input channels, e.g. ``(2, 4)`` (sparsity ``1 - N/M`` = 0.5).
        ggml: a ggml type name from :data:`GGML_TYPES` (``"q4_k"``); ``bits``, ``group_size``
            and ``symmetric`` are then the type's (use :meth:`ggml_type`).

    Example:
        >>> f = QuantFormat.parse("int4-g128")
        >>> f.bits, f.group_size, f.symmetric
        (4, 128, False)
        >>> f.nbytes((256, 256))  # 32768 code bytes + 512 scales*2 + 512 zeros*4 bits
        34048
        >>> QuantFormat.parse("int4-g128-s2:4").nbytes((256, 256))  # 16384 + 8192 mask + ...
        25856
    """

    bits: int
    group_size: int | None = None
    symmetric: bool = False
    float_kind: str | None = None
    sparsity: float = 0.0
    n_m: tuple[int, int] | None = None
    ggml: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or self.bits not in VALID_BITS:
            raise ValueError(f"`bits` must be one of {VALID_BITS}, got {self.bits!r}")
        self._check_sparsity()
        if self.ggml is not None:
            self._check_ggml()
            return
        if self.bits == 16:
            kind = self.float_kind or "bf16"
            if kind not in FLOAT_KINDS:
                raise ValueError(f"`float_kind` must be one of {FLOAT_KINDS}, got {kind!r}")
            if self.group_size is not None:
                raise ValueError("`group_size` must be None for a 16-bit float format")
            object.__setattr__(self, "float_kind", kind)
            object.__setattr__(self, "symmetric", True)
            return
        if self.float_kind is not None:
            raise ValueError("`float_kind` is only valid with bits=16")
        if self.group_size is not None and (
            not isinstance(self.group_size, int) or self.group_size < 1
        ):
            raise ValueError(
                f"`group_size` must be a positive int or None, got {self.group_size!r}"
            )

    @classmethod
    def ggml_type(cls, name: str) -> QuantFormat:
        """The format of ggml type ``name`` (``"q4_k"``, case-insensitive)."""
        key = str(name).strip().lower()
        t = GGML_TYPES.get(key)
        if t is None:
            raise ValueError(f"unknown ggml type {name!r}; valid: {', '.join(GGML_TYPES)}")
        return cls(bits=t.bits, group_size=t.block, symmetric=t.symmetric, ggml=key)

    def _check_ggml(self) -> None:
        t = GGML_TYPES.get(self.ggml) if isinstance(self.ggml, str) else None
        if t is None:
            raise ValueError(f"`ggml` must be one of {', '.join(GGML_TYPES)}, got {self.ggml!r}")
        if self.is_sparse or self.float_kind is not None:
            raise ValueError(f"ggml type {self.ggml} cannot be sparse or a float kind")
        if (self.bits, self.group_size, self.symmetric) != (t.bits, t.block, t.symmetric):
            raise ValueError(
                f"ggml type {self.ggml} has bits={t.bits}, group_size={t.block}, "
                f"symmetric={t.symmetric}; use QuantFormat.ggml_type({self.ggml!r})"
            )

    def _check_sparsity(self) -> None:
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
            raise ValueError(f"`sparsity` must be a float in [0, 1), got {s!r}")
        if self.n_m is None:
            object.__setattr__(self, "sparsity", round(float(s), SPARSITY_DECIMALS))
            return
        nm = tuple(self.n_m) if isinstance(self.n_m, (tuple, list)) else ()
        if len(nm) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in nm):
            raise ValueError(
                f"`n_m` must be a pair of ints (N, M) such as (2, 4), got {self.n_m!r}"
            )
        n, m = nm
        if not 0 < n < m:
            raise ValueError(f"`n_m` needs 0 < N < M (N kept of every M), got {self.n_m!r}")
        derived = round(1.0 - n / m, SPARSITY_DECIMALS)
        if s and round(float(s), SPARSITY_DECIMALS) != derived:
            raise ValueError(
                f"`sparsity` {s!r} contradicts `n_m` {n}:{m} (which means sparsity {derived})"
            )
        object.__setattr__(self, "n_m", (n, m))
        object.__setattr__(self, "sparsity", derived)

    # ------------------------------------------------------------------ parsing / naming
    @classmethod
    def parse(cls, key: str | QuantFormat) -> QuantFormat:
        """Parse a key such as ``int3-g64``, ``int8-pc-sym``, ``bf16``, ``int4-g128-s0.5`` or
        ``int3-g64-s2:4``."""
        if isinstance(key, QuantFormat):
            return key
        if not isinstance(key, str):
            raise TypeError(f"format key must be a str, got {type(key).__name__}")
        text = key.strip().lower()
        sparse: dict[str, Any] = {}
        sm = _SPARSE.match(text)
        if sm is not None:
            text = sm["base"]
            if sm["n"] is not None:
                sparse["n_m"] = (int(sm["n"]), int(sm["m"]))
            else:
                sparse["sparsity"] = float(sm["s"])
                if not 0.0 < sparse["sparsity"] < 1.0:
                    raise ValueError(
                        f"format key {key!r}: unstructured sparsity must be in (0, 1), "
                        "e.g. '-s0.5'; semi-structured is '-sN:M', e.g. '-s2:4'"
                    )
        if text in FLOAT_KINDS:
            return cls(bits=16, float_kind=text, **sparse)
        if text in GGML_TYPES:
            if sparse:
                raise ValueError(f"format key {key!r}: ggml types cannot be sparse")
            return cls.ggml_type(text)
        m = _KEY.match(text)
        if m is None:
            raise ValueError(
                f"unknown format key {key!r}; valid keys look like 'int4-g128', "
                "'int3-g64-sym', 'int8-pc' (per-channel), 'bf16' or 'fp16', optionally "
                "sparse with '-s0.5' (unstructured fraction in (0, 1)) or '-s2:4' (N:M), "
                f"or a ggml type ({', '.join(GGML_TYPES)})"
            )
        group = int(m["group"]) if m["group"] else None
        return cls(bits=int(m["bits"]), group_size=group, symmetric=bool(m["sym"]), **sparse)

    @property
    def key(self) -> str:
        """Canonical string key (inverse of :meth:`parse`)."""
        if self.ggml is not None:
            return self.ggml
        if self.is_float:
            base = str(self.float_kind)
        else:
            group = f"g{self.group_size}" if self.group_size is not None else "pc"
            base = f"int{self.bits}-{group}" + ("-sym" if self.symmetric else "")
        if self.n_m is not None:
            return f"{base}-s{self.n_m[0]}:{self.n_m[1]}"
        return f"{base}-s{self.sparsity!r}" if self.sparsity else base

    def __str__(self) -> str:
        return self.key

    @property
    def is_float(self) -> bool:
        """True for the unquantized 16-bit formats."""
        return self.bits == 16

    @property
    def is_sparse(self) -> bool:
        """True when the format stores a keep-mask (unstructured or N:M sparsity)."""
        return self.n_m is not None or self.sparsity > 0.0

    @property
    def dense(self) -> QuantFormat:
        """The same format without sparsity."""
        if self.ggml is not None:
            return self
        return QuantFormat(self.bits, self.group_size, self.symmetric, self.float_kind)

    @property
    def is_ggml(self) -> bool:
        """True for a ggml block type (built only by the ``ggml`` backend)."""
        return self.ggml is not None

    # ------------------------------------------------------------------ accounting
    def unsupported_reason(self, shape: tuple[int, ...]) -> str | None:
        """Why a weight of ``shape`` = (out, in, ...) cannot be stored in this format, or
        ``None`` when it can."""
        if len(shape) < 2:
            return f"{self.key}: weights of {len(shape)} dimension(s) are not searched"
        cols = _in_features(shape)
        if self.ggml is not None and cols % GGML_TYPES[self.ggml].block:
            block = GGML_TYPES[self.ggml].block
            return f"{self.key}: row length {cols} is not a multiple of its block of {block}"
        if self.group_size is not None and cols % self.group_size:
            return (
                f"{self.key}: in_features {cols} is not divisible by group size {self.group_size}"
            )
        if self.n_m is not None and cols % self.n_m[1]:
            n, m = self.n_m
            return f"{self.key}: {n}:{m} sparsity needs in_features divisible by {m}, got {cols}"
        return None

    def supports(self, shape: tuple[int, ...]) -> bool:
        """Whether a weight of ``shape`` = (out, in, ...) can be stored in this format."""
        return self.unsupported_reason(shape) is None

    def n_groups(self, shape: tuple[int, ...]) -> int:
        """Number of (scale, zero) groups for a weight of ``shape``."""
        if self.is_float:
            return 0
        rows, cols = shape[0], _in_features(shape)
        if self.group_size is None:
            return rows
        if cols % self.group_size:
            raise ValueError(
                f"format {self.key} needs in_features divisible by {self.group_size}; "
                f"shape {tuple(shape)} has {cols}"
            )
        return rows * (cols // self.group_size)

    def pruned_per_row(self, in_features: int) -> int:
        """Zeros per output row: ``floor(sparsity * in_features)`` exactly (decimal sparsity),
        or ``in_features * (M - N) / M`` for N:M."""
        if self.n_m is not None:
            n, m = self.n_m
            if in_features % m:
                raise ValueError(
                    f"format {self.key} needs in_features divisible by {m}, got {in_features}"
                )
            return in_features // m * (m - n)
        return math.floor(Fraction(repr(self.sparsity)) * in_features)

    def n_kept(self, shape: tuple[int, ...]) -> int:
        """Number of stored (non-pruned) weights of a weight of ``shape``."""
        rows, cols = shape[0], _in_features(shape)
        return rows * (cols - self.pruned_per_row(cols)) if self.is_sparse else rows * cols

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Exact bytes stored for a weight of ``shape``: codes of the kept weights + keep-mask
        (sparse only) + fp16 scales + packed zeros."""
        if self.ggml is not None:
            t = GGML_TYPES[self.ggml]
            return self.n_groups(shape) * t.block_bytes
        numel = math.prod(shape)
        kept = self.n_kept(shape)
        mask = math.ceil(numel / 8) if self.is_sparse else 0
        if self.is_float:
            return 2 * kept + mask
        groups = self.n_groups(shape)
        codes = math.ceil(kept * self.bits / 8)
        zeros = 0 if self.symmetric else math.ceil(groups * self.bits / 8)
        return codes + mask + SCALE_BYTES * groups + zeros

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        """Effective bits per weight including every overhead (``8 * nbytes / numel``)."""
        return 8.0 * self.nbytes(shape) / math.prod(shape)

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantFormat:
        return cls.parse(data["key"])


def _in_features(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:])


def parse_formats(formats: Any) -> tuple[QuantFormat, ...]:
    """Parse a sequence of keys/formats (or a comma-separated string), de-duplicated, ordered."""
    if isinstance(formats, (str, QuantFormat)):
        formats = (
            [f for f in str(formats).split(",") if f] if isinstance(formats, str) else [formats]
        )
    try:
        items = list(formats)
    except TypeError:
        raise TypeError("`formats` must be a sequence of format keys or QuantFormat") from None
    if not items:
        raise ValueError("`formats` is empty: give at least one format such as 'int4-g128'")
    parsed: list[QuantFormat] = []
    for item in items:
        fmt = QuantFormat.parse(item)
        if fmt not in parsed:
            parsed.append(fmt)
    return tuple(parsed)
