"""Memory budgets: average bits per weight or total bytes over the searched units.

Accounting is exact (see :mod:`bitalloc.search.formats`): costs are integer bit counts of
codes + fp16 scales + packed zero points, so "3.0 bits" means the stored bytes of all units
are at most ``3.0 * numel / 8``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .solution import Solution
    from .space import SearchSpace

MAX_AVG_BITS = 32.0


class BudgetKind(str, Enum):
    """What the budget limits."""

    AVG_BITS = "avg_bits"
    """Effective bits per weight (all overheads counted), averaged over the searched units."""
    BYTES = "bytes"
    """Total stored bytes of the searched units."""


@dataclass(frozen=True, slots=True)
class Budget:
    """An upper bound on the memory of the searched units.

    Example:
        >>> Budget.avg_bits(3.0).capacity_bits(space) == 3.0 * space.numel
        True
    """

    kind: BudgetKind
    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", BudgetKind(self.kind))
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"budget value must be a finite number, got {v!r}")
        if self.kind is BudgetKind.AVG_BITS and not 0 < v <= MAX_AVG_BITS:
            raise ValueError(f"`avg_bits` must be in (0, {MAX_AVG_BITS:g}], got {v!r}")
        if self.kind is BudgetKind.BYTES and v <= 0:
            raise ValueError(f"`bytes` must be positive, got {v!r}")

    @classmethod
    def avg_bits(cls, bits: float) -> Budget:
        """At most ``bits`` effective bits per weight on average."""
        return cls(BudgetKind.AVG_BITS, float(bits))

    @classmethod
    def bytes(cls, nbytes: float) -> Budget:
        """At most ``nbytes`` stored bytes in total."""
        return cls(BudgetKind.BYTES, float(nbytes))

    def capacity_bits(self, space: SearchSpace) -> float:
        """The budget in bits for ``space``."""
        if self.kind is BudgetKind.AVG_BITS:
            return self.value * space.numel
        return self.value * 8.0

    def from_bits(self, bits: float, space: SearchSpace) -> float:
        """Express a bit count in this budget's unit (avg bits or bytes)."""
        return bits / space.numel if self.kind is BudgetKind.AVG_BITS else bits / 8.0

    def residual(self, solution: Solution) -> float:
        """Budget left over by ``solution`` in bits (>= 0 when feasible)."""
        return self.capacity_bits(solution.space) - 8.0 * solution.nbytes

    def describe(self) -> str:
        if self.kind is BudgetKind.AVG_BITS:
            return f"{self.value:g} avg bits"
        return f"{self.value:,.0f} bytes"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "value": self.value}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Budget:
        return cls(BudgetKind(d["kind"]), float(d["value"]))
