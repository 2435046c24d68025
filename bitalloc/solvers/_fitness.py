"""Plumbing shared by the black-box solvers (``optuna``, ``nsga2``): option checks, budget
repair of whole batches of candidates, and a cached fitness (predicted loss or a measured
``evaluate``).

Notation as in :mod:`bitalloc.solvers._mckp`: groups g, options j, value ``v[g, j]``, row
costs ``a_r[g, j]`` (memory first), capacities ``B_r``. Pure numpy: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from ._mckp import masked, row_scales


def check_int_options(solver: Any, minima: Iterable[tuple[str, int | None]]) -> None:
    """Raise ``ValueError`` unless each named field of ``solver`` is an integer (not a bool)
    ``>= low`` (``low=None``: any integer, e.g. a seed)."""
    for arg, low in minima:
        val = getattr(solver, arg)
        if isinstance(val, bool) or not isinstance(val, int) or (low is not None and val < low):
            bound = "" if low is None else f" >= {low}"
            raise ValueError(f"`{arg}` must be an integer{bound}, got {val!r}")


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


class Fitness:
    """Loss of a per-group choice: the table's predicted sum, or ``evaluate(plan)``.

    Measured values are cached per distinct plan (black-box samplers propose repeats), and
    every distinct plan scored is archived as ``(memory bits, loss)`` for Pareto sets.
    """

    def __init__(
        self,
        problem: Problem,
        table: SensitivityTable,
        evaluate: Callable[..., float] | None = None,
    ) -> None:
        if evaluate is not None and not callable(evaluate):
            raise TypeError(f"`evaluate` must be callable, got {type(evaluate).__name__}")
        self.problem = problem
        self.table = table
        self.evaluate = evaluate
        self.archive: dict[bytes, tuple[np.ndarray, float, float]] = {}
        self.n_evaluations = 0

    def plan(self, choice: np.ndarray, meta: dict[str, Any] | None = None) -> Solution:
        """The candidate as a FEASIBLE :class:`Solution` (objective = predicted loss)."""
        keys = self.table.space.keys
        units = self.problem.expand(choice)
        return Solution(
            space=self.table.space,
            choice=tuple(keys[j] for j in units),
            status=Status.FEASIBLE,
            objective=self.problem.total(choice)[0],
            meta=meta or {"candidate": True},
        )

    def __call__(self, choice: np.ndarray) -> float:
        choice = np.asarray(choice, dtype=np.int64)
        key = choice.tobytes()
        hit = self.archive.get(key)
        if hit is not None:
            return hit[2]
        predicted, bits = self.problem.total(choice)
        loss = predicted if self.evaluate is None else self._measure(choice)
        self.archive[key] = (choice.copy(), bits, loss)
        return loss

    def _measure(self, choice: np.ndarray) -> float:
        value = self.evaluate(self.plan(choice))  # type: ignore[misc]
        self.n_evaluations += 1
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"`evaluate` must return a number, got {value!r}") from None
        if math.isnan(out):
            raise ValueError("`evaluate` returned NaN")
        return out

    def measured(self, choice: np.ndarray) -> float | None:
        """The cached measured loss of ``choice`` (None without ``evaluate``)."""
        if self.evaluate is None:
            return None
        hit = self.archive.get(np.asarray(choice, dtype=np.int64).tobytes())
        return None if hit is None else hit[2]

    def best(self) -> np.ndarray | None:
        """The archived plan of least loss (ties: fewer bits), or ``None``."""
        if not self.archive:
            return None
        return min(self.archive.values(), key=lambda t: (t[2], t[1]))[0]

    def pareto(self) -> list[tuple[np.ndarray, float, float]]:
        """Non-dominated archived ``(choice, bits, loss)``, by increasing bits."""
        from ..search.frontier import pareto_indices

        pts = list(self.archive.values())
        return [pts[i] for i in pareto_indices([(p[1], p[2]) for p in pts])]
