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

Keys: ``int4-g128`` (asymmetric, group 128), ``int4-g128-sym``, ``int8-pc`` (per-channel),
``bf16``, ``fp16``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

SCALE_BYTES = 2  # scales are stored as fp16
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
FLOAT_KINDS = ("bf16", "fp16")
_KEY = re.compile(r"^int(?P<bits>\d+)-(?:g(?P<group>\d+)|(?P<pc>pc))(?P<sym>-sym)?$")


@dataclass(frozen=True, slots=True, order=False)
class QuantFormat:
    """One storage format: integer bits with group-wise scales, or a 16-bit float.

    Args:
        bits: code width, 2..8, or 16 for an unquantized float format.
        group_size: input channels sharing one scale (and zero); ``None`` = per output channel.
            Ignored (must be ``None``) for 16-bit floats.
        symmetric: symmetric grid without zero point (``-sym`` in the key).
        float_kind: ``"bf16"`` or ``"fp16"`` for ``bits=16``; ``None`` otherwise.

    Example:
        >>> f = QuantFormat.parse("int4-g128")
        >>> f.bits, f.group_size, f.symmetric
        (4, 128, False)
        >>> f.nbytes((256, 256))  # 32768 code bytes + 512 scales*2 + 512 zeros*4 bits
        34048
    """

    bits: int
    group_size: int | None = None
    symmetric: bool = False
    float_kind: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or self.bits not in VALID_BITS:
            raise ValueError(f"`bits` must be one of {VALID_BITS}, got {self.bits!r}")
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

    # ------------------------------------------------------------------ parsing / naming
    @classmethod
    def parse(cls, key: str | QuantFormat) -> QuantFormat:
        """Parse a key such as ``int3-g64``, ``int8-pc-sym`` or ``bf16``."""
        if isinstance(key, QuantFormat):
            return key
        if not isinstance(key, str):
            raise TypeError(f"format key must be a str, got {type(key).__name__}")
        text = key.strip().lower()
        if text in FLOAT_KINDS:
            return cls(bits=16, float_kind=text)
        m = _KEY.match(text)
        if m is None:
            raise ValueError(
                f"unknown format key {key!r}; valid keys look like 'int4-g128', "
                "'int3-g64-sym', 'int8-pc' (per-channel), 'bf16' or 'fp16'"
            )
        group = int(m["group"]) if m["group"] else None
        return cls(bits=int(m["bits"]), group_size=group, symmetric=bool(m["sym"]))

    @property
    def key(self) -> str:
        """Canonical string key (inverse of :meth:`parse`)."""
        if self.is_float:
            return str(self.float_kind)
        group = f"g{self.group_size}" if self.group_size is not None else "pc"
        return f"int{self.bits}-{group}" + ("-sym" if self.symmetric else "")

    def __str__(self) -> str:
        return self.key

    @property
    def is_float(self) -> bool:
        """True for the unquantized 16-bit formats."""
        return self.bits == 16

    # ------------------------------------------------------------------ accounting
    def supports(self, shape: tuple[int, ...]) -> bool:
        """Whether a weight of ``shape`` = (out, in, ...) can be stored in this format."""
        if len(shape) < 2:
            return False
        return self.group_size is None or _in_features(shape) % self.group_size == 0

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

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Exact bytes stored for a weight of ``shape``: codes + fp16 scales + packed zeros."""
        numel = math.prod(shape)
        if self.is_float:
            return 2 * numel
        groups = self.n_groups(shape)
        codes = math.ceil(numel * self.bits / 8)
        zeros = 0 if self.symmetric else math.ceil(groups * self.bits / 8)
        return codes + SCALE_BYTES * groups + zeros

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
