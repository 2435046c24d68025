"""The cached fitness of the black-box solvers (``optuna``, ``nsga2``): predicted loss or a
measured ``evaluate``, with the archive of every plan scored.

Notation as in :mod:`bitalloc.solvers._mckp`: groups g, options j, value ``v[g, j]``, row
costs ``a_r[g, j]`` (memory first), capacities ``B_r``. Pure numpy: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable


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
