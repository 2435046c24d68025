"""The Solver protocol and the shared plumbing every solver uses.

``Solver.solve(table, budget) -> Solution``. Solvers are frozen dataclasses whose fields are
their options; they use numpy/scipy/pulp only, never torch. Infeasibility is a result
(``Status.INFEASIBLE`` with the minimum achievable budget in the message), never an exception.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..search.budget import MEMORY, Budget
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable

ROW_RTOL = 1e-9


@runtime_checkable
class Solver(Protocol):
    """Picks one format per unit (tie groups share one) under a memory budget.

    The class declares what it can do (inherit :class:`SolverBase` for the defaults):

    - ``exact``: returns the optimum of the table (the contract suite checks it against
      brute force);
    - ``black_box``: ``solve(table, budget, evaluate=...)`` optimises a measured
      :class:`Evaluator` instead of the table (see :class:`BlackBoxSolver`);
    - ``supports_constraints``: honours budgets with extra linear rows (BOPs, latency);
      otherwise it refuses them with a ValueError;
    - ``prefers_measured``: ``search(fitness="auto")`` hands it the measured KL.
    """

    name: ClassVar[str]
    exact: ClassVar[bool]
    black_box: ClassVar[bool]
    supports_constraints: ClassVar[bool]
    prefers_measured: ClassVar[bool]

    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """Minimise the table's summed predicted loss subject to ``budget``."""
        ...


class SolverBase:
    """The default capabilities of a :class:`Solver`; a solver class overrides what differs."""

    __slots__ = ()
    exact: ClassVar[bool] = False
    black_box: ClassVar[bool] = False
    supports_constraints: ClassVar[bool] = True
    prefers_measured: ClassVar[bool] = False


@runtime_checkable
class Evaluator(Protocol):
    """Measured loss of a plan, lower is better (what black-box solvers optimise).

    ``evaluate(solution, tokens=None) -> float``; e.g. KL of the quantized model to the
    reference on calibration tokens. ``tokens`` limits the measurement to the first ``tokens``
    calibration tokens (``None`` = all of them); EvoPress's multi-step selection grows it.
    Implementations with torch live outside ``solvers/`` (solvers stay free of torch).
    """

    def __call__(self, solution: Solution, *, tokens: int | None = None) -> float:
        """The plan's measured loss."""
        ...


@runtime_checkable
class BlackBoxSolver(Solver, Protocol):
    """A :class:`Solver` with ``black_box = True``: it optimises ``evaluate`` (a measured
    :class:`Evaluator`) when given one, else the table's predicted loss."""

    def solve(
        self, table: SensitivityTable, budget: Budget, evaluate: Evaluator | None = None
    ) -> Solution:
        """The best plan found within ``budget``."""
        ...


def check_int_options(solver: Any, minima: Iterable[tuple[str, int | None]]) -> None:
    """Raise ``ValueError`` unless each named field of ``solver`` is an integer (not a bool)
    ``>= low`` (``low=None``: any integer, e.g. a seed)."""
    for arg, low in minima:
        val = getattr(solver, arg)
        if isinstance(val, bool) or not isinstance(val, int) or (low is not None and val < low):
            bound = "" if low is None else f" >= {low}"
            raise ValueError(f"`{arg}` must be an integer{bound}, got {val!r}")


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
    cheapest plan does not fit the memory budget, or an extra row's own minimum exceeds its
    limit (the solver returns it as is), else ``None``.
    """
    validate(table, budget)
    started = time.perf_counter()
    problem = Problem.build(table, budget)
    if problem.min_cost() > problem.capacity or problem.violated_minima():
        return (
            problem,
            started,
            infeasible(problem, table, budget, provenance(solver, table, budget, started)),
        )
    return problem, started, None


def infeasible(
    problem: Problem,
    table: SensitivityTable,
    budget: Budget,
    meta: dict[str, Any],
    message: str | None = None,
) -> Solution:
    """The INFEASIBLE result, stating the minimum achievable budget of each violated row
    (``message`` overrides)."""
    space = table.space
    if message is None:
        parts = []
        if problem.min_cost() > problem.capacity:
            need = budget.from_bits(problem.min_cost(), space)
            unit = "avg bits" if budget.kind.value == "avg_bits" else "bytes"
            parts.append(
                f"budget {budget.describe(rows=False)} is below the minimum achievable "
                f"{need:.6g} {unit} (every unit at its smallest allowed format)"
            )
        for name, low, limit in problem.violated_minima():
            parts.append(
                f"constraint {name!r} limit {limit:.6g} is below its minimum achievable "
                f"{low:.6g} (every unit at its cheapest option for {name!r})"
            )
        message = "; ".join(parts) or "no plan meets every constraint"
    return Solution(space=space, choice=(), status=Status.INFEASIBLE, message=message, meta=meta)


def relative_gap(objective: float, bound: float) -> float:
    """``(objective - bound) / |objective|``, clamped at 0 (0 when both are 0; ``inf`` when
    only the objective is 0)."""
    diff = max(0.0, objective - bound)
    return diff / abs(objective) if objective else (0.0 if diff == 0 else math.inf)


def joint_message(problem: Problem) -> str:
    """Why an exact solver found no plan although every row alone is satisfiable."""
    return (
        f"no plan meets the memory budget and the constraints {list(problem.extra_names)} "
        "jointly (each alone is satisfiable)"
    )


def make_solution(
    problem: Problem,
    table: SensitivityTable,
    budget: Budget,
    group_choice: np.ndarray,
    status: Status,
    meta: dict[str, Any],
    message: str = "",
) -> Solution:
    """Expand a per-group choice into a :class:`Solution`, checking every budget row.

    Memory is checked exactly (integer bytes); extra rows by their exactly rounded sums with
    a relative slack of ``ROW_RTOL`` (``1e-9``) against float rounding.
    """
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
    res = budget.residuals(sol)
    if res[MEMORY] < 0:  # exact integer accounting; a solver bug if reached
        raise RuntimeError(f"solver produced a plan over budget by {-res[MEMORY]:.0f} bits")
    for c in budget.constraints:  # float rows: exactly rounded sums, 1e-9 relative slack
        if res[c.name] < -ROW_RTOL * max(1.0, abs(c.limit)):
            raise RuntimeError(
                f"solver produced a plan over constraint {c.name!r} by {-res[c.name]:.6g}"
            )
    loose = problem.max_cost() <= problem.capacity
    loose = loose and bool((problem.extra_max() <= problem.extra_caps).all())
    if not message and res[MEMORY] > 0 and loose:
        sol = _with_message(sol, "budget is not binding: every unit takes its best format")
    return sol


def _with_message(sol: Solution, message: str) -> Solution:
    import dataclasses

    return dataclasses.replace(sol, message=message)


def provenance(
    solver: Any, table: SensitivityTable, budget: Budget, started: float
) -> dict[str, Any]:
    """Standard ``meta`` of a solution: solver name and options, estimator, budget, time."""
    import dataclasses

    is_dc = dataclasses.is_dataclass(solver) and not isinstance(solver, type)
    opts = dataclasses.asdict(solver) if is_dc else {}
    meta: dict[str, Any] = {
        "solver": type(solver).name,
        "solver_options": opts,
        "estimator": table.estimator,
        "budget": budget.to_dict(),
        "solve_time_s": round(time.perf_counter() - started, 4),
    }
    for key in ("model", "model_fingerprint", "calibration", "backend"):
        if key in table.meta:
            meta[key] = table.meta[key]
    return meta
