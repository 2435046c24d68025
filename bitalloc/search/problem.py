"""The multiple-choice knapsack instance behind a (table, budget) pair, with ties merged.

Solvers work on :class:`Problem`: groups g = 1..G (a free unit, or a whole tie group whose
units must share a format), options j = formats, value ``v[g, j]`` (predicted loss, summed over
the group's units) and cost ``c[g, j]`` (exact bits, summed), both ``inf`` where the option is
not allowed. Choose one option per group, ``sum c <= capacity``, minimise ``sum v``
(Kellerer, Pferschy & Pisinger, *Knapsack Problems*, 2004, ch. 11; tie merging as in
algorithms.md section 8 item 10). A budget's extra linear constraints add rows
``sum_g a_r[g, j] <= b_r`` (``extra_costs[r]``, ``extra_caps[r]``), merged over ties the same
way. Pure numpy: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .budget import Budget
from .space import SearchSpace
from .table import SensitivityTable


@dataclass(frozen=True, slots=True)
class Problem:
    """Grouped MCKP arrays. ``members[g]`` lists the unit indices of group ``g``.

    ``extra_costs`` ``[m, G, F]`` (``inf`` where not allowed) and ``extra_caps`` ``[m]`` are the
    budget's extra rows, named ``extra_names``; empty (m = 0) for a memory-only budget.
    ``unit_group[i]`` is the group of unit ``i`` (derived from ``members`` when omitted).
    """

    values: np.ndarray  # [G, F] float64, inf = not allowed
    costs: np.ndarray  # [G, F] float64 bits, inf = not allowed
    members: tuple[tuple[int, ...], ...]
    capacity: float  # bits
    n_units: int
    extra_costs: np.ndarray = None  # type: ignore[assignment]  # [m, G, F]; None -> m = 0
    extra_caps: np.ndarray = None  # type: ignore[assignment]  # [m]
    extra_names: tuple[str, ...] = ()
    unit_group: np.ndarray = None  # type: ignore[assignment]  # [n_units]; None -> derived

    def __post_init__(self) -> None:
        g, f = self.values.shape
        extra = self.extra_costs
        extra = np.zeros((0, g, f)) if extra is None else np.asarray(extra, dtype=np.float64)
        caps = np.zeros(0) if self.extra_caps is None else np.asarray(self.extra_caps, float)
        if extra.shape[1:] != (g, f) or caps.shape != (extra.shape[0],):
            raise ValueError(
                f"`extra_costs` must be [m, {g}, {f}] and `extra_caps` [m]; "
                f"got {extra.shape} and {caps.shape}"
            )
        names = tuple(self.extra_names) or tuple(f"row{r}" for r in range(len(caps)))
        if len(names) != len(caps):
            raise ValueError(f"`extra_names` needs {len(caps)} names, got {len(names)}")
        object.__setattr__(self, "extra_costs", extra)
        object.__setattr__(self, "extra_caps", caps)
        object.__setattr__(self, "extra_names", names)
        if self.unit_group is None:
            ug = np.empty(self.n_units, dtype=np.int64)
            for k, m in enumerate(self.members):
                ug[list(m)] = k
            object.__setattr__(self, "unit_group", ug)

    @classmethod
    def build(cls, table: SensitivityTable, budget: Budget) -> Problem:
        space = table.space
        mask = space.mask
        unit_cost = np.where(mask, _unit_bits(space, mask), np.inf)
        unit_val = np.where(mask, table.values, np.inf)
        members: list[tuple[int, ...]] = []
        group = np.empty(len(space), dtype=np.int64)
        first: dict[str, int] = {}
        ties = space.tie_groups()
        for i, u in enumerate(space.units):
            if u.tie is None:
                group[i] = len(members)
                members.append((i,))
            elif u.tie in first:
                group[i] = first[u.tie]
            else:
                group[i] = first[u.tie] = len(members)
                members.append(tuple(ties[u.tie]))

        def merge(a: np.ndarray) -> np.ndarray:
            if len(members) == len(space):  # no tie group with two or more units
                return a
            out = np.zeros((len(members), a.shape[1]))
            np.add.at(out, group, a)
            return out

        cons = budget.constraints
        extra = np.stack([merge(c.unit_costs(space)) for c in cons]) if cons else None
        return cls(
            values=merge(unit_val),
            costs=merge(unit_cost),
            members=tuple(members),
            capacity=budget.capacity_bits(space),
            n_units=len(space),
            extra_costs=extra,  # type: ignore[arg-type]  # None -> no rows (__post_init__)
            extra_caps=np.array([c.limit for c in cons], dtype=np.float64),
            extra_names=tuple(c.name for c in cons),
            unit_group=group,
        )

    @property
    def n_groups(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_extra(self) -> int:
        """Number of extra constraint rows (0 for a memory-only budget)."""
        return len(self.extra_caps)

    @property
    def allowed(self) -> np.ndarray:
        return np.isfinite(self.costs) & np.isfinite(self.values)

    def row_costs(self) -> np.ndarray:
        """All rows ``[1 + m, G, F]``: memory bits first, then the extra rows."""
        return np.concatenate([self.costs[None], self.extra_costs])

    def row_caps(self) -> np.ndarray:
        """All right-hand sides ``[1 + m]``: memory capacity first."""
        return np.concatenate([[self.capacity], self.extra_caps])

    def min_cost(self) -> float:
        """Smallest achievable total memory cost (bits)."""
        return float(np.where(self.allowed, self.costs, np.inf).min(axis=1).sum())

    def max_cost(self) -> float:
        """Largest total memory cost any choice can have (bits)."""
        return float(np.where(self.allowed, self.costs, -np.inf).max(axis=1).sum())

    def extra_min(self) -> np.ndarray:
        """Per extra row, its own minimum over all plans ``[m]`` (each row alone)."""
        a = np.where(self.allowed[None], self.extra_costs, np.inf)
        return a.min(axis=2).sum(axis=1)

    def extra_max(self) -> np.ndarray:
        """Per extra row, its own maximum over all plans ``[m]``."""
        a = np.where(self.allowed[None], self.extra_costs, -np.inf)
        return a.max(axis=2).sum(axis=1)

    def violated_minima(self) -> list[tuple[str, float, float]]:
        """``(name, own minimum, limit)`` of every extra row no plan can satisfy."""
        mins = self.extra_min()
        caps = self.extra_caps
        return [(n, float(m), float(c)) for n, m, c in zip(self.extra_names, mins, caps) if m > c]

    def cheapest(self) -> np.ndarray:
        """Per group, the allowed option of least memory cost (ties -> least value)."""
        c = np.where(self.allowed, self.costs, np.inf)
        v = np.where(self.allowed, self.values, np.inf)
        order = np.lexsort((v, c), axis=1) if c.size else np.zeros_like(c, dtype=int)
        return order[:, 0].astype(np.int64)

    def total(self, choice: np.ndarray) -> tuple[float, float]:
        """(objective, memory cost in bits) of a per-group choice."""
        rows = np.arange(self.n_groups)
        return float(self.values[rows, choice].sum()), float(self.costs[rows, choice].sum())

    def extra_totals(self, choice: np.ndarray) -> np.ndarray:
        """Extra rows' totals ``[m]`` of a per-group choice."""
        rows = np.arange(self.n_groups)
        return self.extra_costs[:, rows, choice].sum(axis=1)

    def fits(self, choice: np.ndarray) -> bool:
        """Allowed everywhere and within every row (memory and extra)."""
        rows = np.arange(self.n_groups)
        if not bool(self.allowed[rows, choice].all()):
            return False
        if float(self.costs[rows, choice].sum()) > self.capacity:
            return False
        return bool((self.extra_totals(choice) <= self.extra_caps).all())

    def expand(self, choice: np.ndarray) -> np.ndarray:
        """Per-unit format indices from per-group choices."""
        return np.asarray(choice, dtype=np.int64)[self.unit_group]


def _unit_bits(space: SearchSpace, mask: np.ndarray) -> np.ndarray:
    """Exact bits ``[n_units, n_formats]`` (``8 * space.nbytes_matrix()`` where allowed),
    computed once per distinct shape instead of once per unit."""
    index: dict[tuple[int, ...], int] = {}
    sid = np.fromiter(
        (index.setdefault(u.shape, len(index)) for u in space.units),
        dtype=np.int64,
        count=len(space),
    )
    per_shape = np.full((len(index), len(space.formats)), np.nan)
    for k, shape in enumerate(index):
        for j, f in enumerate(space.formats):
            try:
                per_shape[k, j] = 8.0 * f.nbytes(shape)
            except ValueError:
                pass  # not storable: fine unless a unit of this shape allows it
    bits = per_shape[sid]
    if np.isnan(bits[mask]).any():
        space.nbytes_matrix()  # raises the format's error for the offending unit
    return bits
