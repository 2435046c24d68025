"""The Solver protocol and the shared plumbing every solver uses.

``Solver.solve(table, budget) -> Solution``. Solvers are frozen dataclasses whose fields are
their options; they use numpy/scipy/pulp only, never torch. Infeasibility is a result
(``Status.INFEASIBLE`` with the minimum achievable budget in the message), never an exception.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..search.budget import Budget
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable


@runtime_checkable
class Solver(Protocol):
    """Picks one format per unit (tie groups share one) under a memory budget."""

    name: ClassVar[str]

    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """Minimise the table's summed predicted loss subject to ``budget``."""
        ...


def validate(table: Any, budget: Any) -> None:
    """Type-check the solver inputs (messages name the argument)."""
    if not isinstance(table, SensitivityTable):
        raise TypeError(f"`table` must be a SensitivityTable, got {type(table).__name__}")
    if not isinstance(budget, Budget):
        raise TypeError(f"`budget` must be a Budget, got {type(budget).__name__}")


def start(
    solver: Any,
    table: SensitivityTable,
    budget: Budget,
) -> tuple[Problem, float, Solution | None]:
    """Validate, build the grouped problem and start the clock.

    Returns ``(problem, started, early)``; ``early`` is the INFEASIBLE result when even the
    cheapest plan does not fit (the solver returns it as is), else ``None``.
    """
    validate(table, budget)
    started = time.perf_counter()
    problem = Problem.build(table, budget)
    if problem.min_cost() > problem.capacity:
        return (
            problem,
            started,
            infeasible(problem, table, budget, provenance(solver, table, budget, started)),
        )
    return problem, started, None


def infeasible(
    problem: Problem, table: SensitivityTable, budget: Budget, meta: dict[str, Any]
) -> Solution:
    """The INFEASIBLE result, stating the minimum achievable budget."""
    space = table.space
    need = budget.from_bits(problem.min_cost(), space)
    unit = "avg bits" if budget.kind.value == "avg_bits" else "bytes"
    msg = (
        f"budget {budget.describe()} is below the minimum achievable {need:.6g} {unit} "
        f"(every unit at its smallest allowed format)"
    )
    return Solution(space=space, choice=(), status=Status.INFEASIBLE, message=msg, meta=meta)


def make_solution(
    problem: Problem,
    table: SensitivityTable,
    budget: Budget,
    group_choice: np.ndarray,
    status: Status,
    meta: dict[str, Any],
    message: str = "",
) -> Solution:
    """Expand a per-group choice into a :class:`Solution`, checking the budget exactly."""
    space = table.space
    unit_choice = problem.expand(np.asarray(group_choice, dtype=np.int64))
    keys = space.keys
    sol = Solution(
        space=space,
        choice=tuple(keys[j] for j in unit_choice),
        status=status,
        objective=problem.total(group_choice)[0],
        message=message,
        meta=meta,
    )
    if budget.residual(sol) < 0:  # exact integer accounting; a solver bug if reached
        raise RuntimeError(
            f"solver produced a plan over budget by {-budget.residual(sol):.0f} bits"
        )
    if not message and budget.residual(sol) > 0 and problem.max_cost() <= problem.capacity:
        sol = _with_message(sol, "budget is not binding: every unit takes its best format")
    return sol


def _with_message(sol: Solution, message: str) -> Solution:
    return Solution(
        space=sol.space,
        choice=sol.choice,
        status=sol.status,
        objective=sol.objective,
        message=message,
        meta=sol.meta,
    )


def provenance(
    solver: Any, table: SensitivityTable, budget: Budget, started: float
) -> dict[str, Any]:
    """Standard ``meta`` of a solution: solver name and options, estimator, budget, time."""
    import dataclasses

    opts = dataclasses.asdict(solver) if dataclasses.is_dataclass(solver) else {}
    meta: dict[str, Any] = {
        "solver": type(solver).name,
        "solver_options": opts,
        "estimator": table.estimator,
        "budget": budget.to_dict(),
        "solve_time_s": round(time.perf_counter() - started, 4),
    }
    for key in ("model", "model_fingerprint", "calibration"):
        if key in table.meta:
            meta[key] = table.meta[key]
    return meta
