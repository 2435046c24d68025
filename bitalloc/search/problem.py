"""The multiple-choice knapsack instance behind a (table, budget) pair, with ties merged.

Solvers work on :class:`Problem`: groups g = 1..G (a free unit, or a whole tie group whose
units must share a format), options j = formats, value ``v[g, j]`` (predicted loss, summed over
the group's units) and cost ``c[g, j]`` (exact bits, summed), both ``inf`` where the option is
not allowed. Choose one option per group, ``sum c <= capacity``, minimise ``sum v``
(Kellerer, Pferschy & Pisinger, *Knapsack Problems*, 2004, ch. 11; tie merging as in
algorithms.md section 8 item 10). Pure numpy: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .budget import Budget
from .table import SensitivityTable


@dataclass(frozen=True, slots=True)
class Problem:
    """Grouped MCKP arrays. ``members[g]`` lists the unit indices of group ``g``."""

    values: np.ndarray  # [G, F] float64, inf = not allowed
    costs: np.ndarray  # [G, F] float64 bits, inf = not allowed
    members: tuple[tuple[int, ...], ...]
    capacity: float  # bits
    n_units: int

    @classmethod
    def build(cls, table: SensitivityTable, budget: Budget) -> Problem:
        space = table.space
        unit_cost = 8.0 * space.nbytes_matrix().astype(np.float64)
        mask = space.mask
        unit_cost[~mask] = np.inf
        unit_val = np.where(mask, table.values, np.inf)
        members: list[tuple[int, ...]] = []
        seen: set[str] = set()
        ties = space.tie_groups()
        for i, u in enumerate(space.units):
            if u.tie is None:
                members.append((i,))
            elif u.tie not in seen:
                seen.add(u.tie)
                members.append(tuple(ties[u.tie]))
        values = np.stack([unit_val[list(m)].sum(axis=0) for m in members])
        costs = np.stack([unit_cost[list(m)].sum(axis=0) for m in members])
        return cls(
            values=values,
            costs=costs,
            members=tuple(members),
            capacity=budget.capacity_bits(space),
            n_units=len(space),
        )

    @property
    def n_groups(self) -> int:
        return len(self.members)

    @property
    def allowed(self) -> np.ndarray:
        return np.isfinite(self.costs) & np.isfinite(self.values)

    def min_cost(self) -> float:
        """Smallest achievable total cost (bits)."""
        return float(np.where(self.allowed, self.costs, np.inf).min(axis=1).sum())

    def max_cost(self) -> float:
        """Largest total cost any choice can have (bits)."""
        return float(np.where(self.allowed, self.costs, -np.inf).max(axis=1).sum())

    def cheapest(self) -> np.ndarray:
        """Per group, the allowed option of least cost (ties -> least value)."""
        c = np.where(self.allowed, self.costs, np.inf)
        v = np.where(self.allowed, self.values, np.inf)
        order = np.lexsort((v, c), axis=1) if c.size else np.zeros_like(c, dtype=int)
        return order[:, 0].astype(np.int64)

    def total(self, choice: np.ndarray) -> tuple[float, float]:
        """(objective, cost in bits) of a per-group choice."""
        rows = np.arange(self.n_groups)
        return float(self.values[rows, choice].sum()), float(self.costs[rows, choice].sum())

    def fits(self, choice: np.ndarray) -> bool:
        rows = np.arange(self.n_groups)
        ok = bool(self.allowed[rows, choice].all())
        return ok and float(self.costs[rows, choice].sum()) <= self.capacity

    def expand(self, choice: np.ndarray) -> np.ndarray:
        """Per-unit format indices from per-group choices."""
        out = np.empty(self.n_units, dtype=np.int64)
        for g, m in enumerate(self.members):
            out[list(m)] = int(choice[g])
        return out
