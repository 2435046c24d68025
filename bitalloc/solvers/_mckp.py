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


def row_scales(problem: Problem) -> np.ndarray:
    """Per row (memory first, then extra rows) a positive scale: the spread between the row's
    largest and smallest total over all plans (1 when every plan costs the same)."""
    a = problem.row_costs()
    ok = problem.allowed[None]
    spread = (np.where(ok, a, -np.inf).max(axis=2) - np.where(ok, a, np.inf).min(axis=2)).sum(1)
    return np.where(spread > 0, spread, 1.0)


def greedy_choice(problem: Problem, start: np.ndarray | None = None) -> np.ndarray:
    """Greedy MCKP: start at the cheapest options, take the most efficient upgrade that fits.

    Efficiency of moving group g from its current option ``a`` to an option ``k`` with
    ``v[g, k] < v[g, a]`` is ``rho = (v[g, a] - v[g, k]) / (c[g, k] - c[g, a])`` (``inf`` for
    a free improvement). Repeatedly apply the move of largest ``rho`` whose extra cost still
    fits the remaining budget, until none fits. A lazy max-heap holds each group's best move;
    because the remaining budget only shrinks, a move that no longer fits is re-evaluated for
    its group and pushed back with a lower key. The marginal-return rule of Shoham & Gersho,
    IEEE TASSP 36 (1988), applied to the MCKP (Kellerer, Pferschy & Pisinger, *Knapsack
    Problems*, 2004, ch. 11).

    With extra rows r a move must fit every row, and its cost is the scaled aggregate
    ``sum_r max(dc_r, 0) / s_r`` (``s_r`` from :func:`row_scales`; Toyoda's aggregate resource
    for the multidimensional knapsack, Manage. Sci. 21, 1975). ``start`` must fit every row;
    default :func:`feasible_start` (ValueError when it finds none).
    """
    _, c, v = masked(problem)
    if start is None:
        start = feasible_start(problem)
        if start is None:
            raise ValueError("no starting plan meets every constraint")
    choice = np.asarray(start, dtype=np.int64).copy()
    allowed = problem.allowed
    rows_c = np.where(allowed[None], problem.row_costs(), np.inf)
    scale = row_scales(problem).tolist()
    n_rows = len(scale)
    rows = np.arange(problem.n_groups)
    remaining = (problem.row_caps() - rows_c[:, rows, choice].sum(axis=1)).tolist()
    version = [0] * problem.n_groups
    per_group = np.moveaxis(rows_c, 0, 2).tolist()  # [G][F][R] plain floats: fast scans
    opts = [
        [(j, cj, vj) for j, (cj, vj) in enumerate(zip(cr, vr)) if vj != math.inf]
        for cr, vr in zip(per_group, v.tolist())
    ]

    def best_move(g: int) -> tuple[float, int] | None:
        a = int(choice[g])
        ca, va = per_group[g][a], v[g, a]
        best: tuple[float, int] | None = None
        for j, cj, vj in opts[g]:
            gain = va - vj
            if gain <= 0:
                continue
            agg = 0.0
            for r in range(n_rows):
                d = cj[r] - ca[r]
                if d > remaining[r]:
                    break
                if d > 0:
                    agg += d / scale[r]
            else:
                rho = gain / agg if agg > 0 else math.inf
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
        d = [cn - co for cn, co in zip(per_group[g][k], per_group[g][int(choice[g])])]
        if all(dr <= rr for dr, rr in zip(d, remaining)):
            choice[g] = k
            remaining = [rr - dr for dr, rr in zip(d, remaining)]
        version[g] += 1
        move = best_move(g)
        if move is not None:
            heapq.heappush(heap, (-move[0], g, move[1], int(version[g])))
    return choice


def feasible_start(problem: Problem) -> np.ndarray | None:
    """A plan that fits every row: the cheapest-memory plan, repaired when it breaks an extra
    row; ``None`` when the repair gets stuck (the rows may still be jointly satisfiable: only
    an exact solver decides)."""
    choice = problem.cheapest()
    if problem.fits(choice):
        return choice
    try:
        return repair(problem, choice)
    except RuntimeError:
        return None


def repair(problem: Problem, choice: np.ndarray) -> np.ndarray:
    """Move groups to other options until the choice fits every row.

    The violation is ``V = sum_r max(C_r - B_r, 0) / s_r`` over the rows (memory first; ``s_r``
    from :func:`row_scales`). Each step takes the move of least value increase per unit of
    violation removed, ``min (v[g, k] - v[g, a]) / (V - V_after)`` over moves that reduce V;
    for memory alone that is the downgrade of least loss per bit of overshoot removed.
    Used when a MIP solution rounded from solver tolerances overshoots the exact budget, and to
    find a start meeting extra rows. Raises RuntimeError when no move reduces V.
    """
    allowed, _, v = masked(problem)
    a = np.where(allowed[None], problem.row_costs(), np.inf)
    caps, scale = problem.row_caps(), row_scales(problem)
    choice = np.asarray(choice, dtype=np.int64).copy()
    rows = np.arange(problem.n_groups)
    while True:
        cur = a[:, rows, choice]  # [R, G]
        over = cur.sum(axis=1) - caps
        if (over <= 0).all() and allowed[rows, choice].all():
            return choice
        now = float((np.maximum(over, 0) / scale).sum())
        with np.errstate(invalid="ignore"):
            after = over[:, None, None] + (a - cur[:, :, None])
            viol = (np.maximum(after, 0) / scale[:, None, None]).sum(axis=0)
        red = now - viol
        ok = allowed & (red > 1e-12 * now)  # a real reduction, not rounding noise
        if not ok.any():
            raise RuntimeError("cannot repair: no move reduces the budget overshoot")
        loss = v - v[rows, choice][:, None]
        ratio = np.where(ok, loss / np.where(ok, red, 1.0), np.inf)
        g, k = np.unravel_index(int(np.argmin(ratio)), ratio.shape)
        choice[g] = k


def lp_bound(problem: Problem) -> float:
    """Optimum of the LP relaxation (a lower bound on the MCKP optimum); ``inf`` when even the
    cheapest plan overflows.

    Per group the lower convex hull of the undominated (cost, value) points; every hull edge
    is a step with ``dc > 0``, ``dv < 0`` and efficiency ``-dv/dc``, decreasing along a
    group's hull. Applying all steps by efficiency while the budget lasts, the first
    overflowing one fractionally, gives the LP optimum (Sinha & Zoltners, Oper. Res. 27, 1979;
    Zemel, IPL 18, 1984; algorithms.md section 8 items 1-4): :func:`~bitalloc.solvers._hull.
    hull_greedy`'s bound.
    """
    from ._hull import hull_greedy

    if problem.capacity < problem.min_cost():
        return math.inf  # the LP is infeasible too
    _, c, v = masked(problem)
    return hull_greedy(c, v, problem.capacity)[1]


def repair_batch(problem: Problem, choices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make every row of ``choices`` ``[N, G]`` fit every budget row; ``(repaired, ok)``.

    The batched form of :func:`bitalloc.solvers._mckp.repair`: with the scaled violation
    ``V = sum_r max(C_r - B_r, 0) / s_r``, each still-violating candidate takes the move of
    least value increase per unit of violation removed, ``min (v[g, k] - v[g, a]) / (V -
    V_after)``; for memory alone that lowers the group whose downgrade costs the least
    predicted loss per bit of overshoot removed. All candidates step together (one vectorised
    pass per move), so a population is repaired in ``O(max moves)`` numpy passes. ``ok[n]`` is
    False where no move reduces the violation any more (possible only with extra rows); such
    rows are returned unchanged and must not be used as plans.
    """
    allowed, _, v = masked(problem)
    a = np.where(allowed[None], problem.row_costs(), np.inf)  # [R, G, F]
    caps, scale = problem.row_caps(), row_scales(problem)
    x = np.array(choices, dtype=np.int64, copy=True).reshape(-1, problem.n_groups)
    rows = np.arange(problem.n_groups)
    if not allowed[rows, x].all():
        raise ValueError("`choices` holds options that are not allowed")
    ok = np.ones(len(x), dtype=bool)
    active = np.arange(len(x))
    while active.size:
        cur = np.moveaxis(a[:, rows[None, :], x[active]], 0, 1)  # [n, R, G]
        over = cur.sum(axis=2) - caps
        keep = ~(over <= 0).all(axis=1)
        active, cur, over = active[keep], cur[keep], over[keep]
        if not active.size:
            break
        now = (np.maximum(over, 0) / scale).sum(axis=1)  # [n]
        with np.errstate(invalid="ignore"):
            after = over[:, :, None, None] + (a[None] - cur[..., None])  # [n, R, G, F]
            viol = (np.maximum(after, 0) / scale[None, :, None, None]).sum(axis=1)
        red = now[:, None, None] - viol
        movable = allowed[None] & (red > 1e-12 * now[:, None, None])
        stuck = ~movable.reshape(len(active), -1).any(axis=1)
        ok[active[stuck]] = False
        active, movable, red = active[~stuck], movable[~stuck], red[~stuck]
        if not active.size:
            break
        with np.errstate(invalid="ignore"):
            loss = v[None] - v[rows[None, :], x[active]][:, :, None]
            ratio = np.where(movable, loss / np.where(movable, red, 1.0), np.inf)
        flat = np.argmin(ratio.reshape(len(active), -1), axis=1)
        g, k = np.divmod(flat, problem.values.shape[1])
        x[active, g] = k
    return x, ok
