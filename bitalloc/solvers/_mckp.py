"""Shared multiple-choice knapsack (MCKP) routines on a tie-merged :class:`Problem`.

Notation (algorithms.md section 8): groups g, options j, value ``v[g, j]`` (predicted loss),
cost ``c[g, j]`` (bits), capacity ``B``; choose one option per group, ``sum c <= B``,
minimise ``sum v``. Pure numpy.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from ..search.problem import Problem


def masked(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(allowed, costs, values)`` with ``inf`` wherever an option is not allowed."""
    allowed = problem.allowed
    return (
        allowed,
        np.where(allowed, problem.costs, np.inf),
        np.where(allowed, problem.values, np.inf),
    )


def best_value_choice(problem: Problem) -> np.ndarray:
    """Per group the allowed option of least value (ties -> least cost, then lowest index).

    This is the optimum whenever the budget is not binding (``max_cost <= B``).
    """
    _, c, v = masked(problem)
    return np.lexsort((c, v), axis=1)[:, 0].astype(np.int64)


def greedy_choice(problem: Problem) -> np.ndarray:
    """Greedy MCKP: start at the cheapest options, take the most efficient upgrade that fits.

    Efficiency of moving group g from its current option ``a`` to an option ``k`` with
    ``c[g, k] >= c[g, a]`` and ``v[g, k] < v[g, a]`` is ``rho = (v[g, a] - v[g, k]) /
    (c[g, k] - c[g, a])`` (``inf`` for a free improvement). Repeatedly apply the move of
    largest ``rho`` whose extra cost still fits the remaining budget, until none fits. A lazy
    max-heap holds each group's best move; because the remaining budget only shrinks, a move
    that no longer fits is re-evaluated for its group and pushed back with a lower key.
    The marginal-return rule of Shoham & Gersho, IEEE TASSP 36 (1988), applied to the MCKP
    (Kellerer, Pferschy & Pisinger, *Knapsack Problems*, 2004, ch. 11).
    """
    _, c, v = masked(problem)
    choice = problem.cheapest()
    rows = np.arange(problem.n_groups)
    remaining = float(problem.capacity - c[rows, choice].sum())
    version = [0] * problem.n_groups
    opts = [
        [(j, cj, vj) for j, (cj, vj) in enumerate(zip(cr, vr)) if cj != math.inf]
        for cr, vr in zip(c.tolist(), v.tolist())
    ]  # plain floats: fast per-group scans

    def best_move(g: int) -> tuple[float, int] | None:
        a = int(choice[g])
        ca, va = c[g, a], v[g, a]
        best: tuple[float, int] | None = None
        for j, cj, vj in opts[g]:
            dc, gain = cj - ca, va - vj
            if dc >= 0 and gain > 0 and dc <= remaining:
                rho = gain / dc if dc > 0 else math.inf
                if best is None or rho > best[0]:
                    best = (rho, j)
        return best

    heap: list[tuple[float, int, int, int]] = []
    for g in range(problem.n_groups):
        move = best_move(g)
        if move is not None:
            heap.append((-move[0], g, move[1], 0))
    heapq.heapify(heap)
    while heap:
        _, g, k, ver = heapq.heappop(heap)
        if ver != version[g]:
            continue
        dc = float(c[g, k] - c[g, choice[g]])
        if dc <= remaining:
            choice[g] = k
            remaining -= dc
        version[g] += 1
        move = best_move(g)
        if move is not None:
            heapq.heappush(heap, (-move[0], g, move[1], int(version[g])))
    return choice


def repair(problem: Problem, choice: np.ndarray) -> np.ndarray:
    """Downgrade until the choice fits: each step takes the cheaper option with the least
    value increase per bit saved, ``min (v[g, k] - v[g, a]) / (c[g, a] - c[g, k])``.

    Used when a MIP solution rounded from solver tolerances overshoots the exact budget.
    Requires ``min_cost <= B`` (always reachable: every step saves bits).
    """
    allowed, c, v = masked(problem)
    choice = np.asarray(choice, dtype=np.int64).copy()
    rows = np.arange(problem.n_groups)
    over = float(c[rows, choice].sum() - problem.capacity)
    while over > 0:
        save = c[rows, choice][:, None] - c
        loss = v - v[rows, choice][:, None]
        ok = allowed & (save > 0)
        if not ok.any():
            raise RuntimeError("cannot repair: no cheaper option left (budget below minimum)")
        ratio = np.where(ok, loss / np.where(ok, save, 1.0), np.inf)
        g, k = np.unravel_index(int(np.argmin(ratio)), ratio.shape)
        over -= float(save[g, k])
        choice[g] = k
    return choice


def lp_bound(problem: Problem) -> float:
    """Optimum of the LP relaxation (a lower bound on the MCKP optimum).

    Per group keep the lower convex hull of the undominated (cost, value) points; every hull
    edge is a step with ``dc > 0``, ``dv < 0`` and efficiency ``-dv/dc``, decreasing along a
    group's hull. Sorting all steps by efficiency and applying them while the budget lasts,
    the first overflowing step fractionally, gives the LP optimum (Sinha & Zoltners, Oper.
    Res. 27, 1979; Zemel, IPL 18, 1984; algorithms.md section 8 items 1-4).
    """
    allowed, c, v = masked(problem)
    base, steps = 0.0, []
    for g in range(problem.n_groups):
        idx = np.flatnonzero(allowed[g])
        order = idx[np.lexsort((v[g, idx], c[g, idx]))]
        hull: list[tuple[float, float]] = []
        for j in order:
            p = (float(c[g, j]), float(v[g, j]))
            if hull and p[1] >= hull[-1][1]:
                continue  # dominated: not cheaper and not better
            while len(hull) >= 2 and _not_convex(hull[-2], hull[-1], p):
                hull.pop()
            hull.append(p)
        base += hull[0][1]
        for pos, (a, b) in enumerate(zip(hull, hull[1:])):
            steps.append(((a[1] - b[1]) / (b[0] - a[0]), g, pos, b[0] - a[0], b[1] - a[1]))
    room = problem.capacity - problem.min_cost()
    if room < 0:
        return math.inf  # the LP is infeasible too
    if not steps:
        return base
    arr = np.array(steps, dtype=np.float64)
    arr = arr[np.lexsort((arr[:, 2], arr[:, 1], -arr[:, 0]))]
    spent = np.cumsum(arr[:, 3])
    n_full = int(np.searchsorted(spent, room, side="right"))
    total = base + float(arr[:n_full, 4].sum())
    if n_full < len(arr):
        used = float(spent[n_full - 1]) if n_full else 0.0
        total += (room - used) / float(arr[n_full, 3]) * float(arr[n_full, 4])
    return total


def _not_convex(a: tuple[float, float], b: tuple[float, float], p: tuple[float, float]) -> bool:
    """True if ``b`` lies on or above the segment ``a``-``p`` (slope ab >= slope bp)."""
    return (b[1] - a[1]) * (p[0] - b[0]) >= (p[1] - b[1]) * (b[0] - a[0])
