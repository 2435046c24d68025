"""Multiple-choice knapsack at per-channel scale (10^5-10^7 groups): convex hulls, the LP
optimum by marginal efficiency or by bisection on the Lagrange multiplier, then a greedy fill.

Notation as in :mod:`bitalloc.solvers._mckp`: groups g, options j, value ``v[g, j]``, memory
cost ``c[g, j]`` (bits), capacity ``B``. Everything is vectorised over groups (loops run only
over the <= F options of a group, the bisection steps and the few fill moves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.choices import Choice, set_choice
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from . import SOLVERS
from ._hull import hull_greedy
from ._mckp import masked
from .base import SolverBase, make_solution, provenance, relative_gap, start, validate

__all__ = ["LagrangianSolver", "fill_moves", "solve_problem"]


class Method(Choice):
    """How the lagrangian solver finds the multiplier."""

    HULL = "hull"
    BISECTION = "bisection"


METHODS = Method.values()
OPTIMAL_GAP = 1e-12  # a relative gap below this (float rounding) counts as zero


@SOLVERS.register("lagrangian")
@dataclass(frozen=True)
class LagrangianSolver(SolverBase):
    """LP-relaxation MCKP solver for huge (per-channel) spaces; reports its LP bound and gap.

    1. Per group keep the lower convex hull of its (cost, value) points: sort by cost, drop
       dominated options (not cheaper and not better), pop points on or above the chord.
       Every hull edge is an upgrade step with ``dc > 0``, ``dv < 0`` and efficiency
       ``rho = -dv / dc``, strictly decreasing along a group's hull.
    2. ``method="hull"``: start every group at its cheapest vertex, sort all steps by ``rho``
       (descending), prefix-sum ``dc`` and apply every step before the first that overflows
       ``B`` (the split step). The LP optimum is this plan plus the split step's fraction
       (Sinha & Zoltners, Oper. Res. 27, 1979; algorithms.md section 8 items 1-6).
       ``method="bisection"``: for a multiplier ``lam`` every group takes
       ``argmin_j v[g, j] + lam * c[g, j]`` (always a hull vertex); the cost ``C(lam)`` is
       non-increasing, so bisect (geometrically, then arithmetically, to float resolution) to
       the smallest ``lam`` with ``C(lam) <= B`` (Everett, Oper. Res. 11, 1963; Shoham &
       Gersho, IEEE TASSP 36, 1988). Groups whose choice agrees at both ends of the bracket
       are settled and leave the active set. The bound is Everett's dual
       ``L(lam) = sum_g min_j (v + lam c) - lam B`` at both ends (valid for any ``lam``).
       Both give the same plan up to ties in ``rho``.
    3. Fill: apply further moves to any option (hull or not) that still fit, most efficient
       first, until none fits (feasible, only lowers the objective).

    ``LP <= optimum <= objective <= LP + |dv_split|``: the integrality gap is at most one step
    of one group. ``meta``: ``lp_bound``, ``gap = (objective - lp_bound) / objective``,
    ``method``, and ``n_steps``/``split`` (hull) or ``lambda``/``iterations`` (bisection),
    ``fill_moves``. Status OPTIMAL when the gap is zero (below 1e-12), else FEASIBLE.

    Single memory budget only: a budget with extra rows (BOPs, latency) raises ValueError;
    use ``ilp`` (exact) or ``greedy`` for those (a basic LP optimum with m rows has up to m
    fractional groups and needs m multipliers, algorithms.md section 8 item 9).

    Args:
        method: ``"hull"`` (sort by efficiency) or ``"bisection"`` (on the multiplier).
        fill: spend the budget left after the LP prefix on further moves that fit.

    Example:
        >>> sol = LagrangianSolver().solve(table, Budget.avg_bits(3.0))
        >>> sol.meta["gap"] < 1e-4
        True
    """

    method: Method | str = Method.HULL
    fill: bool = True

    name: ClassVar[str]
    supports_constraints: ClassVar[bool] = False

    def __post_init__(self) -> None:
        set_choice(self, "method", Method)
        if not isinstance(self.fill, bool):
            raise TypeError(f"`fill` must be a bool, got {self.fill!r}")

    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """LP-rounded plan under the memory ``budget`` (INFEASIBLE when nothing fits)."""
        validate(table, budget)
        if budget.constraints:
            names = [c.name for c in budget.constraints]
            raise ValueError(
                f"solver 'lagrangian' handles the memory budget only; this budget has extra "
                f"constraint rows {names}: use solver 'ilp' (exact) or 'greedy'"
            )
        problem, started, early = start(self, table, budget)
        if early is not None:
            return early
        res = solve_problem(problem, self.method, self.fill)
        meta = provenance(self, table, budget, started)
        meta.update(res.info, lp_bound=res.lp_bound, gap=res.gap)
        status = Status.OPTIMAL if res.gap <= OPTIMAL_GAP else Status.FEASIBLE
        return make_solution(problem, table, budget, res.choice, status, meta)


@dataclass(frozen=True)
class Result:
    choice: np.ndarray  # [G] option per group
    objective: float
    cost: float
    lp_bound: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def gap(self) -> float:
        """``(objective - lp_bound) / objective``, clamped at 0 (0 when both are 0)."""
        return relative_gap(self.objective, self.lp_bound)


def solve_problem(problem: Problem, method: str = "hull", fill: bool = True) -> Result:
    """The solver on a built :class:`Problem` (needs ``min_cost <= capacity``; the memory row
    only: ValueError when the problem has extra rows)."""
    if problem.n_extra:
        raise ValueError(
            f"the lagrangian solver handles the memory row only; the problem has extra rows "
            f"{list(problem.extra_names)}: use solver 'ilp' or 'greedy'"
        )
    method = Method.parse(method, "method")
    _, c, v = masked(problem)
    best = _best_value(c, v)
    if problem.total(best)[1] <= problem.capacity:  # not binding: the unconstrained optimum
        obj, cost = problem.total(best)
        return Result(best, obj, cost, obj, {"method": method, "fill_moves": 0})
    if method == "hull":
        choice, lp, info = hull_greedy(c, v, problem.capacity)
    else:
        choice, lp, info = bisection(c, v, problem.capacity, best)
    moves = 0
    if fill:
        room = problem.capacity - problem.total(choice)[1]
        choice, moves = fill_moves(c, v, choice, room)
    obj, cost = problem.total(choice)
    return Result(choice, obj, cost, min(lp, obj), {"method": method, **info, "fill_moves": moves})


def _best_value(c: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per group the option of least value, ties -> least cost, then lowest index (as
    :func:`~bitalloc.solvers._mckp.best_value_choice`, without a row-wise lexsort)."""
    tie = v == v.min(axis=1, keepdims=True)
    return np.argmin(np.where(tie, c, np.inf), axis=1)


def bisection(
    c: np.ndarray, v: np.ndarray, capacity: float, best: np.ndarray, max_iter: int = 300
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Smallest multiplier with ``C(lam) <= B`` by bisection (module doc, step 2).

    Requires ``C(best) > B`` (binding). The bracket starts around the multiplier of a strided
    sample of groups (solved the same way with a proportional budget) when there are many.
    """
    rows = np.arange(len(c))
    lo, hi, c_lo, c_hi, evals = _bracket(c, v, capacity, best)
    act = np.flatnonzero(c_lo != c_hi)  # groups settled at both ends stay settled
    va, ca = v[act], c[act]
    fixed = float(np.delete(c[rows, c_hi], act).sum())
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        mid = hi / 16 if lo == 0 else (math.sqrt(lo * hi) if hi > 4 * lo else lo + (hi - lo) / 2)
        if not lo < mid < hi or act.size == 0:
            break
        j = np.argmin(va + mid * ca, axis=1)
        if fixed + float(ca[np.arange(act.size), j].sum()) <= capacity:
            hi, c_hi[act] = mid, j
        else:
            lo, c_lo[act] = mid, j
        same = c_lo[act] == c_hi[act]
        if same.any():
            fixed += float(ca[np.flatnonzero(same), c_hi[act[same]]].sum())
            act, va, ca = act[~same], va[~same], ca[~same]
    bound = -math.inf
    for lam, ch in ((lo, c_lo), (hi, c_hi)):  # Everett's dual at both ends of the bracket
        bound = max(bound, float(v[rows, ch].sum()) + lam * (float(c[rows, ch].sum()) - capacity))
    return c_hi, bound, {"lambda": hi, "iterations": it + evals}


def _bracket(
    c: np.ndarray, v: np.ndarray, capacity: float, best: np.ndarray, sample: int = 10_000
) -> tuple[float, float, np.ndarray, np.ndarray, int]:
    """``(lo, hi, choice at lo, choice at hi, full evaluations)`` with ``C(lo) > B >= C(hi)``."""
    rows = np.arange(len(c))

    def at(lam: float) -> tuple[np.ndarray, float]:
        j = np.argmin(v + lam * c, axis=1)
        return j, float(c[rows, j].sum())

    cheap = c.min(axis=1)
    guess = None
    if len(c) > 2 * sample:  # the multiplier of a strided sample with a proportional budget
        idx = rows[:: len(c) // sample]
        span = c[rows, best] - cheap
        cap_s = float(cheap[idx].sum()) + (capacity - float(cheap.sum())) * float(
            span[idx].sum()
        ) / max(float(span.sum()), 1e-300)
        if float(c[idx, best[idx]].sum()) > cap_s:
            guess = bisection(c[idx], v[idx], cap_s, best[idx])[2]["lambda"]
    if guess is None or not 0 < guess < 1e300:  # above every upgrade's efficiency
        with np.errstate(invalid="ignore", divide="ignore"):
            dc = c - cheap[:, None]
            rho = np.where(dc > 0, (v[rows, np.argmin(c, axis=1)][:, None] - v) / dc, 0.0)
        hi = max(float(np.nanmax(rho)), 1e-300) * 2.0
        return 0.0, hi, best.copy(), at(hi)[0], 1
    lo, c_lo, hi, evals = 0.0, best.copy(), 1.05 * guess, 1  # a narrow bracket first
    c_hi, cost = at(hi)
    while cost > capacity and hi < 1e300:
        lo, c_lo, hi, evals = hi, c_hi, hi * 4.0, evals + 1
        c_hi, cost = at(hi)
    if cost > capacity:  # pragma: no cover - overflow guard
        return _bracket(c, v, capacity, best, sample=len(c))
    if lo == 0.0:
        lo = guess / 1.05
        while lo > 1e-300:
            evals += 1
            j, cost = at(lo)
            if cost > capacity:
                return lo, hi, j, c_hi, evals
            hi, c_hi, lo = lo, j, lo / 4.0
        lo = 0.0
    return lo, hi, c_lo, c_hi, evals


def fill_moves(
    c: np.ndarray, v: np.ndarray, choice: np.ndarray, room: float
) -> tuple[np.ndarray, int]:
    """Apply moves that fit the ``room`` left, most efficient first (module doc, step 3).

    Each pass ranks every improving move that fits (``gain / dc``, ``inf`` when ``dc <= 0``)
    and applies them in that order while they fit, one per group; passes repeat over the
    groups that had candidates until nothing more fits.
    """
    choice = choice.copy()
    groups = np.arange(len(c))
    moves = 0
    while groups.size:
        cg, vg = (c, v) if groups.size == len(c) else (c[groups], v[groups])
        cur = choice[groups][:, None]
        d = cg - np.take_along_axis(cg, cur, axis=1)
        gain = np.take_along_axis(vg, cur, axis=1) - vg
        gi, kj = np.nonzero((gain > 0) & (d <= room))
        if gi.size == 0:
            break
        dd, gg = d[gi, kj], gain[gi, kj]
        with np.errstate(divide="ignore"):
            rho = np.where(dd > 0, gg / np.where(dd > 0, dd, 1.0), np.inf)
        order = np.lexsort((kj, gi, -rho))
        dd, gi, kj = dd[order], gi[order], kj[order]
        used = np.zeros(groups.size, dtype=bool)
        applied = 0
        pos = 0
        while pos < dd.size:
            ok = np.flatnonzero((dd[pos:] <= room) & ~used[gi[pos:]])
            if ok.size == 0:
                break
            pos += int(ok[0])
            g = int(gi[pos])
            choice[groups[g]] = kj[pos]
            room -= float(dd[pos])
            used[g] = True
            applied += 1
            pos += 1
        moves += applied
        if applied == 0:
            break
        groups = groups[np.unique(gi)]
    return choice, moves
