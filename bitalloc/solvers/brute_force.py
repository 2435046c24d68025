"""Exhaustive search: the exact reference (test oracle) for small instances."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from . import SOLVERS
from .base import SolverBase, infeasible, joint_message, make_solution, provenance, start

CHUNK = 1 << 16


@SOLVERS.register("brute_force")
@dataclass(frozen=True)
class BruteForceSolver(SolverBase):
    """Enumerate every combination of the groups' allowed options; keep the best that fits.

    ``min_x sum_g v[g, x_g]`` s.t. ``sum_g c[g, x_g] <= B`` (and every extra budget row
    ``sum_g a_r[g, x_g] <= b_r``) over all ``prod_g |J_g|``
    assignments (J_g = allowed options of group g), evaluated in numpy chunks of mixed-radix
    indices. Ties -> lower cost, then the first in enumeration order. Exact by construction;
    the oracle that every exact solver is tested against (DESIGN.md, "every exact solver is
    checked against brute force on small tables"; MCKP: Kellerer, Pferschy & Pisinger,
    *Knapsack Problems*, 2004, ch. 11). Status OPTIMAL.

    Args:
        max_combinations: refuse (ValueError) instances with more assignments than this.
    """

    max_combinations: int = 1_000_000

    name: ClassVar[str]
    exact: ClassVar[bool] = True

    def __post_init__(self) -> None:
        m = self.max_combinations
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"`max_combinations` must be a positive int, got {m!r}")

    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """The exact optimum (INFEASIBLE when even the cheapest plan does not fit)."""
        problem, started, early = start(self, table, budget)
        if early is not None:
            return early
        options = [np.flatnonzero(row) for row in problem.allowed]
        dims = tuple(len(o) for o in options)
        count = math.prod(dims)
        if count > self.max_combinations:
            raise ValueError(
                f"brute force would enumerate {count:,} combinations, above "
                f"`max_combinations`={self.max_combinations:,}; use an exact solver such as "
                "'ilp' or raise `max_combinations`"
            )
        choice = self._search(problem, options, dims, count)
        meta = provenance(self, table, budget, started)
        meta["combinations"] = count
        if choice is None:
            return infeasible(problem, table, budget, meta, joint_message(problem))
        return make_solution(problem, table, budget, choice, Status.OPTIMAL, meta)

    @staticmethod
    def _search(
        problem: Problem, options: list[np.ndarray], dims: tuple[int, ...], count: int
    ) -> np.ndarray | None:
        costs = [problem.costs[g, o] for g, o in enumerate(options)]
        values = [problem.values[g, o] for g, o in enumerate(options)]
        extras = [problem.extra_costs[:, g, o] for g, o in enumerate(options)]  # [m, |J_g|]
        best: tuple[float, float, int] = (math.inf, math.inf, -1)
        for first in range(0, count, CHUNK):
            flat = np.arange(first, min(first + CHUNK, count), dtype=np.int64)
            digits = np.unravel_index(flat, dims)
            cost = np.zeros(len(flat))
            value = np.zeros(len(flat))
            extra = np.zeros((problem.n_extra, len(flat)))
            for g, d in enumerate(digits):
                cost += costs[g][d]
                value += values[g][d]
                extra += extras[g][:, d]
            ok = (cost <= problem.capacity) & (extra <= problem.extra_caps[:, None]).all(axis=0)
            fit = np.flatnonzero(ok)
            if fit.size == 0:
                continue
            i = fit[np.lexsort((flat[fit], cost[fit], value[fit]))[0]]
            cand = (float(value[i]), float(cost[i]), int(flat[i]))
            if cand < best:
                best = cand
        if best[2] < 0:
            return None  # the rows are jointly unsatisfiable
        index = [int(d) for d in np.unravel_index(best[2], dims)]
        return np.array([options[g][d] for g, d in enumerate(index)], dtype=np.int64)
