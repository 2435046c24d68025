"""Greedy marginal-efficiency allocation (a fast heuristic; no optimality proof)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..search.budget import Budget
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from . import SOLVERS
from ._mckp import feasible_start, greedy_choice
from .base import SolverBase, infeasible, make_solution, provenance, start


@SOLVERS.register("greedy")
@dataclass(frozen=True)
class GreedySolver(SolverBase):
    """Start every group at its cheapest format; repeatedly take the upgrade of best efficiency.

    For group g at option ``a``, an upgrade to ``k`` (``c[g, k] >= c[g, a]``, ``v[g, k] <
    v[g, a]``) has efficiency ``rho = -(v[g, k] - v[g, a]) / (c[g, k] - c[g, a])`` (loss removed
    per extra bit). The upgrade of largest ``rho`` whose extra cost fits the remaining budget is
    applied until none fits. This is the marginal-return rule of Shoham & Gersho, "Efficient bit
    allocation for an arbitrary set of quantizers", IEEE TASSP 36 (1988), i.e. the classic MCKP
    greedy (Kellerer, Pferschy & Pisinger, *Knapsack Problems*, 2004, ch. 11). On convex
    (value, cost) curves it matches the LP optimum except for the split group. Status FEASIBLE.

    Extra budget rows (BOPs, latency): an upgrade must fit every row; its cost is the scaled
    sum of its row increases (:func:`~bitalloc.solvers._mckp.greedy_choice`). When the
    cheapest-memory plan breaks an extra row it is first repaired
    (:func:`~bitalloc.solvers._mckp.repair`); if that gets stuck the result is INFEASIBLE with
    a message pointing to ``ilp``.

    Example:
        >>> sol = GreedySolver().solve(table, Budget.avg_bits(3.0))
    """

    name: ClassVar[str]

    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """Greedy plan under ``budget`` (INFEASIBLE when even the cheapest plan does not fit)."""
        problem, started, early = start(self, table, budget)
        if early is not None:
            return early
        first = feasible_start(problem)
        if first is None:
            msg = (
                "greedy found no plan meeting every constraint (each row alone is "
                "satisfiable; use the exact solver 'ilp' to decide whether they are jointly)"
            )
            return infeasible(
                problem, table, budget, provenance(self, table, budget, started), msg
            )
        meta = provenance(self, table, budget, started)
        choice = greedy_choice(problem, first)
        return make_solution(problem, table, budget, choice, Status.FEASIBLE, meta)
