"""Plans to measure: a spread of feasible plans around a budget (pure numpy).

The measured correction of a table (:mod:`bitalloc.search.correction`) needs plans whose
measured KL tells the fit how the table errs where the solver will look: near the budget and
near the table's optimum. :func:`near_plans` returns, in this order,

1. the exact optimum of the table at the budget (``ilp``);
2. the two-precision rules on the same table (``nncf_ratio``, ``mlx_threshold``), when they
   find a plan;
3. exact optima at the budget shifted by ``-0.2, -0.1, +0.1, +0.2`` average bits (clipped to
   what the space can reach);
4. mutations of the optimum: 1 to ``8`` EvoPress level switches
   (:func:`bitalloc.solvers._evo.mutate`, which never leaves the budget);
5. random-mix plans: the greedy optimum of ``lam * v + (1 - lam) * noise`` (:mod:`validate`).

Duplicates are dropped. Same seed, same plans.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..search.budget import Budget, BudgetKind
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from . import SOLVERS
from ._evo import Ladders, group_choice, mutate
from ._mckp import greedy_choice
from .base import make_solution

SHIFTS = (-0.2, -0.1, 0.1, 0.2)
MAX_SWITCHES = 8


def near_plans(
    table: SensitivityTable, budget: Budget, n: int, *, seed: int = 0
) -> list[Solution]:
    """Up to ``n`` distinct feasible plans around ``budget`` (see the module doc); empty when
    the table's optimum at ``budget`` is infeasible."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be an int >= 1, got {n!r}")
    rng = np.random.default_rng(seed)
    best = SOLVERS.get("ilp").solve(table, budget)
    if not best.success:
        return []
    plans: list[Solution] = [best]
    seen = {best.choice}

    def add(sol: Solution, origin: str) -> None:
        if sol.success and sol.choice not in seen and len(plans) < n:
            seen.add(sol.choice)
            plans.append(_tagged(sol, origin))

    for anchor in ("nncf_ratio", "mlx_threshold"):
        add(SOLVERS.get(anchor).solve(table, budget), anchor)
    for shift in SHIFTS:
        shifted = _shifted(budget, shift, table.space.numel)
        if shifted is not None:
            add(SOLVERS.get("ilp").solve(table, shifted), f"ilp{shift:+g}")
    problem = Problem.build(table, budget)
    ladders = Ladders.build(problem)
    parent = group_choice(problem, table, best)
    n_mut = max((n - len(plans)) * 2 // 3, 0)
    for _ in range(20 * n_mut):
        if len(plans) >= n or len(plans) >= 1 + 2 + len(SHIFTS) + n_mut:
            break
        child = mutate(problem, ladders, parent, rng, int(rng.integers(1, MAX_SWITCHES + 1)))
        if child is not None:
            add(make_solution(problem, table, budget, child, Status.FEASIBLE, {}), "mutation")
    for _ in range(4 * n):
        if len(plans) >= n:
            break
        add(_random_mix(problem, table, budget, rng), "random_mix")
    return plans


def _tagged(sol: Solution, origin: str) -> Solution:
    import dataclasses

    return dataclasses.replace(sol, status=Status.FEASIBLE, message="", meta={"sample": origin})


def _shifted(budget: Budget, shift: float, numel: int) -> Budget | None:
    """``budget`` moved by ``shift`` average bits over ``numel`` weights (None if <= 0)."""
    step = shift if budget.kind is BudgetKind.AVG_BITS else shift * numel / 8.0
    if budget.value + step <= 0:
        return None
    return dataclasses.replace(budget, value=budget.value + step)


def _random_mix(
    problem: Problem, table: SensitivityTable, budget: Budget, rng: np.random.Generator
) -> Solution:
    finite = np.isfinite(problem.values)
    scale = float(np.mean(problem.values[finite])) or 1.0
    lam = rng.uniform()
    noise = rng.uniform(size=problem.values.shape)
    mixed = np.where(finite, lam * problem.values / scale + (1 - lam) * noise, np.inf)
    mix = dataclasses.replace(problem, values=mixed)
    return make_solution(problem, table, budget, greedy_choice(mix), Status.FEASIBLE, {})
