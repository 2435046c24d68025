"""Budgets: a memory bound (average bits per weight or total bytes) plus optional linear rows.

Memory accounting is exact (see :mod:`bitalloc.search.formats`): costs are integer bit counts
of codes + fp16 scales + packed zero points, so "3.0 bits" means the stored bytes of all units
are at most ``3.0 * numel / 8``.

Extra :class:`LinearConstraint` rows bound any other additive resource,
``sum_i cost_i(format_i) <= limit``: bit operations (BOPs), or a latency table measured per
format (per weight) or per (unit, format). Solvers honour every row (``lagrangian`` only the
memory row; it refuses budgets with extra rows).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from .formats import QuantFormat

if TYPE_CHECKING:
    from .solution import Solution
    from .space import SearchSpace

MAX_AVG_BITS = 32.0
MEMORY = "memory"  # the memory row's name in Budget.residuals


class BudgetKind(str, Enum):
    """What the budget limits."""

    AVG_BITS = "avg_bits"
    """Effective bits per weight (all overheads counted), averaged over the searched units."""
    BYTES = "bytes"
    """Total stored bytes of the searched units, plus ``fixed`` bytes outside them (a whole
    file: embeddings, norms, header)."""


@dataclass(frozen=True, slots=True)
class LinearConstraint:
    """One extra budget row: ``sum_i cost(unit_i, format_i) <= limit``.

    Give exactly one cost model:

    - ``per_weight``: format key -> cost per weight; a unit costs ``per_weight[f] * numel``
      (BOPs with a per-format factor, a latency-per-weight table). Every format of the space
      that some unit allows needs an entry.
    - ``per_unit``: unit name -> format key -> cost (a measured latency table); every allowed
      (unit, format) pair needs an entry.
    - ``per_bit``: cost per weight per code bit; a unit costs ``per_bit * bits * numel``
      (16-bit float formats count 16). ``bops`` uses it with ``per_bit = activation bits``.

    Keys not in the search space are ignored (a table measured for more formats or units).

    Example:
        >>> Budget.avg_bits(3.0).with_constraints(LinearConstraint.bops(2.5e9))
    """

    name: str
    limit: float
    per_weight: Mapping[str, float] | None = None
    per_unit: Mapping[str, Mapping[str, float]] | None = None
    per_bit: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name == MEMORY:
            raise ValueError(
                f"`name` must be a non-empty string other than {MEMORY!r}, got {self.name!r}"
            )
        object.__setattr__(self, "limit", _finite(self.limit, "limit"))
        given = [a for a in ("per_weight", "per_unit", "per_bit") if getattr(self, a) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `per_weight`, `per_unit` or `per_bit` "
                f"(constraint {self.name!r} has {given or 'none'})"
            )
        if self.per_weight is not None:
            object.__setattr__(self, "per_weight", _format_costs(self.per_weight, "per_weight"))
        if self.per_unit is not None:
            if not isinstance(self.per_unit, Mapping) or not self.per_unit:
                raise ValueError("`per_unit` must be a non-empty mapping unit -> {format: cost}")
            table = {}
            for unit, row in self.per_unit.items():
                if not isinstance(unit, str):
                    raise ValueError(f"`per_unit` keys must be unit names, got {unit!r}")
                table[unit] = _format_costs(row, f"per_unit[{unit!r}]")
            object.__setattr__(self, "per_unit", MappingProxyType(table))
        if self.per_bit is not None:
            object.__setattr__(self, "per_bit", _finite(self.per_bit, "per_bit"))

    def __hash__(self) -> int:
        unit = None
        if self.per_unit is not None:
            unit = tuple(sorted((u, tuple(sorted(r.items()))) for u, r in self.per_unit.items()))
        weight = None if self.per_weight is None else tuple(sorted(self.per_weight.items()))
        return hash((self.name, self.limit, weight, unit, self.per_bit))

    @classmethod
    def bops(cls, limit: float, activation_bits: int = 16, name: str = "bops") -> LinearConstraint:
        """Bit operations per token: ``sum_i numel_i * weight_bits_i * activation_bits <= limit``.

        A weight matrix does one MAC per weight per token; a 16-bit float format counts 16
        bits (HAWQ-V3, Yao et al., ICML 2021, BOPs = bits_w * bits_a * MACs).
        """
        a = activation_bits
        if isinstance(a, bool) or not isinstance(a, int) or not 1 <= a <= 32:
            raise ValueError(f"`activation_bits` must be an int in [1, 32], got {a!r}")
        return cls(name=name, limit=limit, per_bit=float(a))

    @classmethod
    def latency(
        cls,
        table: Mapping[str, float] | Mapping[str, Mapping[str, float]],
        limit: float,
        name: str = "latency",
    ) -> LinearConstraint:
        """A latency row from a user table: ``{format: time per weight}`` (``per_weight``) or
        ``{unit: {format: time}}`` (``per_unit``, e.g. measured kernel times)."""
        if not isinstance(table, Mapping) or not table:
            raise ValueError("`table` must be a non-empty mapping")
        if all(isinstance(v, Mapping) for v in table.values()):
            return cls(name=name, limit=limit, per_unit=table)  # type: ignore[arg-type]
        return cls(name=name, limit=limit, per_weight=table)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ costs
    def unit_costs(self, space: SearchSpace) -> np.ndarray:
        """Cost ``[n_units, n_formats]`` of every (unit, format); ``inf`` where not allowed.

        Raises ValueError naming the constraint when an allowed pair has no cost.
        """
        mask = space.mask
        keys = space.keys
        if self.per_unit is not None:
            out = np.full(mask.shape, np.inf)
            for i, u in enumerate(space.units):
                row = self.per_unit.get(u.name)
                if row is None:
                    raise ValueError(
                        f"constraint {self.name!r}: `per_unit` has no entry for unit {u.name!r}"
                    )
                for j in np.flatnonzero(mask[i]):
                    if keys[j] not in row:
                        raise ValueError(
                            f"constraint {self.name!r}: `per_unit` has no cost "
                            f"for unit {u.name!r} in format {keys[j]!r}"
                        )
                    out[i, j] = row[keys[j]]
            return out
        numel = np.array([u.numel for u in space.units], dtype=np.float64)
        if self.per_weight is not None:
            missing = [
                k for j, k in enumerate(keys) if mask[:, j].any() and k not in self.per_weight
            ]
            if missing:
                raise ValueError(
                    f"constraint {self.name!r}: `per_weight` has no cost for "
                    f"format(s) {missing} of the search space"
                )
            coef = np.array([self.per_weight.get(k, 0.0) for k in keys])
        else:
            assert self.per_bit is not None  # __post_init__: exactly one of the two is set
            coef = float(self.per_bit) * np.array([f.bits for f in space.formats], float)
        return np.where(mask, numel[:, None] * coef[None, :], np.inf)

    def cost(self, solution: Solution) -> float:
        """This row's total for ``solution`` (exactly rounded sum)."""
        if not solution.choice:
            return 0.0
        cols = {k: j for j, k in enumerate(solution.space.keys)}
        c = self.unit_costs(solution.space)
        return math.fsum(c[i, cols[k]] for i, k in enumerate(solution.choice))

    def describe(self) -> str:
        return f"{self.name} <= {self.limit:.6g}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "limit": self.limit}
        if self.per_weight is not None:
            d["per_weight"] = dict(self.per_weight)
        elif self.per_unit is not None:
            d["per_unit"] = {u: dict(r) for u, r in self.per_unit.items()}
        else:
            d["per_bit"] = self.per_bit
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LinearConstraint:
        try:
            return cls(
                name=d["name"],
                limit=d["limit"],
                per_weight=d.get("per_weight"),
                per_unit=d.get("per_unit"),
                per_bit=d.get("per_bit"),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed constraint: {type(e).__name__}: {e}") from None


@dataclass(frozen=True, slots=True)
class Budget:
    """An upper bound on the memory of the searched units, plus optional linear rows.

    A byte budget can count a whole artifact: ``fixed`` bytes are stored whatever the plan
    (the token embedding and norms a GGUF file holds, its header), so the searched units get
    ``value - fixed``. A budget below ``fixed`` is infeasible (a result with a message).

    Example:
        >>> Budget.avg_bits(3.0).capacity_bits(space) == 3.0 * space.numel
        True
        >>> Budget.bytes(80e6, fixed=21e6).capacity_bits(space) == 59e6 * 8
        True
    """

    kind: BudgetKind
    value: float
    constraints: tuple[LinearConstraint, ...] = ()
    fixed: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", BudgetKind(self.kind))
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"budget value must be a finite number, got {v!r}")
        if self.kind is BudgetKind.AVG_BITS and not 0 < v <= MAX_AVG_BITS:
            raise ValueError(f"`avg_bits` must be in (0, {MAX_AVG_BITS:g}], got {v!r}")
        if self.kind is BudgetKind.BYTES and v <= 0:
            raise ValueError(f"`bytes` must be positive, got {v!r}")
        fixed = _finite(self.fixed, "fixed")
        if fixed < 0:
            raise ValueError(f"`fixed` must be >= 0 bytes, got {self.fixed!r}")
        if fixed and self.kind is not BudgetKind.BYTES:
            raise ValueError("`fixed` bytes apply to byte budgets only (Budget.bytes)")
        object.__setattr__(self, "fixed", fixed)
        cons = tuple(self.constraints)
        for c in cons:
            if not isinstance(c, LinearConstraint):
                raise TypeError(
                    f"`constraints` must hold LinearConstraint, got {type(c).__name__}"
                )
        names = [c.name for c in cons]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"`constraints` names must be unique; repeated: {dup}")
        object.__setattr__(self, "constraints", cons)

    @classmethod
    def avg_bits(cls, bits: float, constraints: Iterable[LinearConstraint] = ()) -> Budget:
        """At most ``bits`` effective bits per weight on average."""
        return cls(BudgetKind.AVG_BITS, float(bits), tuple(constraints))

    @classmethod
    def bytes(
        cls, nbytes: float, constraints: Iterable[LinearConstraint] = (), *, fixed: float = 0
    ) -> Budget:
        """At most ``nbytes`` stored bytes in total; ``fixed`` of them are outside the searched
        units (the whole file: see :func:`bitalloc.backends.export.gguf.file_budget`)."""
        return cls(BudgetKind.BYTES, float(nbytes), tuple(constraints), float(fixed))

    def with_constraints(self, *constraints: LinearConstraint) -> Budget:
        """This budget with ``constraints`` added to its rows."""
        return replace(self, constraints=self.constraints + tuple(constraints))

    def capacity_bits(self, space: SearchSpace) -> float:
        """The memory budget in bits for ``space``."""
        if self.kind is BudgetKind.AVG_BITS:
            return self.value * space.numel
        return (self.value - self.fixed) * 8.0

    def from_bits(self, bits: float, space: SearchSpace) -> float:
        """Express the searched units' bit count in this budget's unit (avg bits, or bytes
        including ``fixed``)."""
        if self.kind is BudgetKind.AVG_BITS:
            return bits / space.numel
        return bits / 8.0 + self.fixed

    def residual(self, solution: Solution) -> float:
        """Memory budget left over by ``solution`` in bits (>= 0 when it fits)."""
        return self.capacity_bits(solution.space) - 8.0 * solution.nbytes

    def residuals(self, solution: Solution) -> dict[str, float]:
        """Slack of every row: ``{"memory": bits left, name: limit - cost, ...}``; all >= 0
        when ``solution`` fits (float rows up to rounding of their sums)."""
        out = {MEMORY: self.residual(solution)}
        for c in self.constraints:
            out[c.name] = c.limit - c.cost(solution)
        return out

    def describe(self, rows: bool = True) -> str:
        """``"3 avg bits"`` or ``"1,234 bytes"``, then the extra rows unless ``rows=False``."""
        mem = (
            f"{self.value:g} avg bits"
            if self.kind is BudgetKind.AVG_BITS
            else f"{self.value:,.0f} bytes"
        )
        if self.fixed:
            mem += f" (whole: {self.fixed:,.0f} outside the searched units)"
        return ", ".join([mem, *(c.describe() for c in self.constraints if rows)])

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind.value, "value": self.value}
        if self.fixed:
            d["fixed"] = self.fixed
        if self.constraints:
            d["constraints"] = [c.to_dict() for c in self.constraints]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Budget:
        cons = tuple(LinearConstraint.from_dict(c) for c in d.get("constraints", ()))
        return cls(BudgetKind(d["kind"]), float(d["value"]), cons, float(d.get("fixed", 0.0)))


def _finite(x: Any, arg: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.number)) or not math.isfinite(x):
        raise ValueError(f"`{arg}` must be a finite number, got {x!r}")
    return float(x)


def _format_costs(costs: Any, arg: str) -> Mapping[str, float]:
    """Validate ``{format key: cost}``; keys canonicalised (``INT4-G128`` -> ``int4-g128``)."""
    if not isinstance(costs, Mapping) or not costs:
        raise ValueError(f"`{arg}` must be a non-empty mapping format key -> cost")
    out: dict[str, float] = {}
    for key, val in costs.items():
        try:
            canon = QuantFormat.parse(key).key
        except (ValueError, TypeError) as e:
            raise ValueError(f"`{arg}` key {key!r} is not a format key: {e}") from None
        out[canon] = _finite(val, f"{arg}[{key!r}]")
    return MappingProxyType(out)
