"""Uniform baseline: every unit stored in the same format."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.formats import QuantFormat
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.space import SearchSpace
from ..search.table import SensitivityTable
from . import SOLVERS
from .base import SolverBase, infeasible, make_solution, provenance, validate


@SOLVERS.register("uniform")
@dataclass(frozen=True)
class UniformSolver(SolverBase):
    """One format for every unit: the largest common format that fits the budget.

    Among the formats ``j`` allowed for every unit, pick ``argmax_j C_j`` subject to
    ``C_j = sum_i c[i, j] <= B`` and every extra budget row ``sum_i a_r[i, j] <= b_r`` (ties
    -> least ``sum_i v[i, j]``, then first in the space).
    This is the fixed-precision baseline that mixed-precision work compares against (e.g.
    HAWQ-V3, Yao et al., ICML 2021, "uniform" rows). Status FEASIBLE.

    Args:
        format: force this format key for every unit (must be in the space and allowed for
            every unit); a budget it does not fit gives INFEASIBLE.

    Example:
        >>> UniformSolver(format="int4-g64").solve(table, Budget.avg_bits(4.5)).choice[0]
        'int4-g64'
    """

    format: str | None = None

    name: ClassVar[str]

    def __post_init__(self) -> None:
        if self.format is not None and not isinstance(self.format, str):
            raise TypeError(f"`format` must be a format key or None, got {self.format!r}")

    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """The uniform plan under ``budget`` (INFEASIBLE when no common format fits)."""
        validate(table, budget)
        started = time.perf_counter()
        space = table.space
        problem = Problem.build(table, budget)
        if problem.violated_minima():
            return infeasible(problem, table, budget, provenance(self, table, budget, started))
        common = problem.allowed.all(axis=0)
        totals = np.where(
            common, np.where(problem.allowed, problem.costs, 0.0).sum(axis=0), np.inf
        )
        objectives = np.where(problem.allowed, problem.values, 0.0).sum(axis=0)
        extra = np.where(problem.allowed[None], problem.extra_costs, 0.0).sum(axis=1)  # [m, F]
        extra_ok = (extra <= problem.extra_caps[:, None]).all(axis=0)
        unit = "avg bits" if budget.kind.value == "avg_bits" else "bytes"
        if self.format is not None:
            j = self._forced_index(space.keys, np.asarray(common))
            msg = ""
            if totals[j] > problem.capacity:
                need = budget.from_bits(float(totals[j]), space)
                msg = (
                    f"format {space.keys[j]} for every unit needs {need:.6g} {unit}, "
                    f"above the budget {budget.describe(rows=False)}"
                )
            elif not extra_ok[j]:
                msg = f"format {space.keys[j]} for every unit breaks " + _broken(
                    problem, extra, int(j)
                )
            if msg:
                return infeasible(
                    problem, table, budget, provenance(self, table, budget, started), msg
                )
        else:
            fits = common & (totals <= problem.capacity)
            if not (fits & extra_ok).any():
                msg = self._no_fit_message(problem, budget, totals, space)
                if fits.any():
                    msg = "no single format for every unit meets every constraint: " + "; ".join(
                        f"{space.keys[j]} breaks {_broken(problem, extra, int(j))}"
                        for j in np.flatnonzero(fits)
                    )
                return infeasible(
                    problem, table, budget, provenance(self, table, budget, started), msg
                )
            cand = np.flatnonzero(fits & extra_ok)
            j = int(cand[np.lexsort((cand, objectives[cand], -totals[cand]))[0]])
        choice = np.full(problem.n_groups, j, dtype=np.int64)
        avg = 8.0 * sum(space.formats[j].nbytes(u.shape) for u in space.units) / space.numel
        return make_solution(
            problem,
            table,
            budget,
            choice,
            Status.FEASIBLE,
            provenance(self, table, budget, started),
            message=f"uniform {space.keys[j]} ({avg:.4f} avg bits)",
        )

    def _forced_index(self, keys: tuple[str, ...], common: np.ndarray) -> int:
        try:
            key = QuantFormat.parse(str(self.format)).key
        except ValueError:
            key = str(self.format)
        if key not in keys:
            raise ValueError(
                f"`format` {self.format!r} is not in the search space; formats: {', '.join(keys)}"
            )
        j = keys.index(key)
        if not common[j]:
            valid = [k for k, ok in zip(keys, common) if ok]
            raise ValueError(
                f"`format` {key!r} is not allowed for every unit; formats allowed "
                f"for all units: {', '.join(valid) or 'none'}"
            )
        return j

    @staticmethod
    def _no_fit_message(
        problem: Problem, budget: Budget, totals: np.ndarray, space: SearchSpace
    ) -> str:
        unit = "avg bits" if budget.kind.value == "avg_bits" else "bytes"
        mixed = budget.from_bits(problem.min_cost(), space)
        if not np.isfinite(totals).any():
            return (
                f"no format is allowed for every unit, so no uniform plan exists "
                f"(the minimum with mixed formats is {mixed:.6g} {unit})"
            )
        j = int(np.argmin(totals))
        need = budget.from_bits(float(totals[j]), space)
        return (
            f"budget {budget.describe(rows=False)} is below the minimum achievable "
            f"{need:.6g} {unit} with one format for every unit ({space.keys[j]}); "
            f"the minimum with mixed formats is {mixed:.6g} {unit}"
        )


def _broken(problem: Problem, extra: np.ndarray, j: int) -> str:
    """The extra rows that the uniform plan ``j`` breaks: ``'name' (total > limit)``."""
    return ", ".join(
        f"{name!r} ({extra[r, j]:.6g} > {cap:.6g})"
        for r, (name, cap) in enumerate(zip(problem.extra_names, problem.extra_caps))
        if extra[r, j] > cap
    )
