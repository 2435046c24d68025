"""Exact multiple-choice knapsack by integer linear programming (PuLP: CBC or HiGHS)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from . import SOLVERS
from ._mckp import best_value_choice, greedy_choice, lp_bound, repair
from .base import make_solution, provenance, start

log = logging.getLogger(__name__)
BACKENDS = ("auto", "cbc", "highs")
AUTO_HIGHS_ABOVE = 20_000  # binaries; CBC is quicker to start on small models, HiGHS on large


@SOLVERS.register("ilp")
@dataclass(frozen=True)
class IlpSolver:
    """Exact MCKP as a 0/1 ILP, solved by CBC or HiGHS through PuLP.

    Binary ``x[g, j]`` for every allowed (group, format)::

        min  sum_gj v[g, j] x[g, j]
        s.t. sum_j x[g, j] = 1                     for every group g
             sum_gj c[g, j] x[g, j] <= B

    the formulation of HAWQ-V3 (Yao et al., ICML 2021) and CalibTIP (Hubara et al., 2021);
    MCKP background in Kellerer, Pferschy & Pisinger, *Knapsack Problems* (2004), ch. 11.
    For numerical sanity values are shifted by each group's minimum and divided by their mean,
    and the budget row is written in average bits over the cheapest plan. Costs are integers,
    so the right-hand side is snapped to the cost lattice plus half a step: solver tolerances
    cannot admit an over-budget plan nor cut off a feasible one. The rounded plan is checked
    exactly; a residual overshoot is repaired by greedy downgrades. The greedy plan is
    returned instead when it is better (possible within ``mip_rel_gap`` or at a time limit).

    Args:
        backend: ``"cbc"`` (PuLP's bundled CBC), ``"highs"`` (needs ``highspy``) or
            ``"auto"`` (HiGHS above 20,000 binaries when installed, else CBC).
        time_limit_s: wall-clock limit; a plan found by then is returned with status LIMIT.
        mip_rel_gap: stop when (incumbent - bound) / incumbent falls below this.
        msg: let the MIP solver print its log.

    ``meta`` records ``backend``, ``n_binaries``, ``solver_status``, ``lp_bound`` (optimum of
    the LP relaxation), ``mip_bound`` (HiGHS's dual bound, else None) and ``mip_gap`` (a
    proven upper bound on ``(objective - optimum) / objective``).

    Example:
        >>> sol = IlpSolver(time_limit_s=10).solve(table, Budget.avg_bits(3.0))
    """

    backend: str = "auto"
    time_limit_s: float = 60.0
    mip_rel_gap: float = 1e-4
    msg: bool = False

    name: ClassVar[str]
    exact: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {BACKENDS}, got {self.backend!r}")
        t = self.time_limit_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"`time_limit_s` must be a positive number, got {t!r}")
        g = self.mip_rel_gap
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0 <= g < 1:
            raise ValueError(f"`mip_rel_gap` must be in [0, 1), got {g!r}")

    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """The optimal plan under ``budget`` (INFEASIBLE when even the cheapest does not fit)."""
        problem, started, early = start(self, table, budget)
        if early is not None:
            return early
        n_bin = int(problem.allowed.sum())
        if problem.max_cost() <= problem.capacity:
            meta = provenance(self, table, budget, started)
            meta.update(backend=None, n_binaries=n_bin, mip_gap=0.0)
            return make_solution(
                problem, table, budget, best_value_choice(problem), Status.OPTIMAL, meta
            )
        backend = self._backend(n_bin)
        from pulp import PulpSolverError

        try:
            result = _solve_mip(problem, table.space.numel, backend, self)
        except (PulpSolverError, OSError) as e:  # a crashed solver falls back to greedy
            log.warning("ILP backend %s failed (%s); using the greedy plan", backend, e)
            result = _MipResult(None, "error", None, f"{type(e).__name__}: {e}")
        bound = lp_bound(problem)
        best = bound if result.bound is None else max(bound, result.bound)
        status, message, choice = self._interpret(problem, result, backend, best)
        gap = _gap(problem.total(choice)[0], best)
        if status is Status.OPTIMAL:  # the solver proved gap <= mip_rel_gap
            gap = min(gap, float(self.mip_rel_gap))
        meta = provenance(self, table, budget, started)
        meta.update(
            backend=backend,
            n_binaries=n_bin,
            solver_status=result.status,
            lp_bound=bound,
            mip_bound=result.bound,
            mip_gap=gap,
        )
        return make_solution(problem, table, budget, choice, status, meta, message)

    def _backend(self, n_binaries: int) -> str:
        has_highs = importlib.util.find_spec("highspy") is not None
        if self.backend == "highs" and not has_highs:
            raise ValueError(
                "`backend`='highs' needs the highspy package "
                "(pip install 'bitalloc[highs]'); valid without it: 'cbc', 'auto'"
            )
        if self.backend == "auto":
            return "highs" if has_highs and n_binaries > AUTO_HIGHS_ABOVE else "cbc"
        return self.backend

    def _interpret(
        self, problem: Problem, result: _MipResult, backend: str, bound: float
    ) -> tuple[Status, str, np.ndarray]:
        if result.choice is None:
            if result.status == "error":
                msg = f"ILP ({backend}) failed ({result.detail}); returning the greedy plan"
            else:
                msg = (
                    f"ILP ({backend}) returned no plan within time_limit_s="
                    f"{self.time_limit_s:g} (solver status {result.status!r}"
                    f"{'; ' + result.detail if result.detail else ''}); "
                    "returning the greedy plan"
                )
            return Status.FEASIBLE, msg, greedy_choice(problem)
        choice, notes = result.choice, []
        status = Status.OPTIMAL if result.status == "optimal" else Status.LIMIT
        if not problem.fits(choice):
            choice, status = repair(problem, choice), Status.FEASIBLE
            notes.append(
                "the MIP plan exceeded the exact budget by rounding and was repaired "
                "by greedy downgrades"
            )
        # Within mip_rel_gap (or at a time limit) the greedy plan can be better: keep the best.
        alt = greedy_choice(problem)
        if problem.total(alt)[0] < problem.total(choice)[0]:
            choice = alt
            notes.append("the greedy plan beat the MIP incumbent and is returned")
        if status is Status.LIMIT:
            gap = _gap(problem.total(choice)[0], bound)
            notes.insert(
                0,
                f"time limit {self.time_limit_s:g}s reached before optimality "
                f"was proven; relative gap <= {gap:.3g}",
            )
        return status, "; ".join(notes), choice


@dataclass(frozen=True)
class _MipResult:
    choice: np.ndarray | None
    status: str  # "optimal", "limit", or the pulp status text
    bound: float | None  # best proven lower bound on the objective (original units)
    detail: str = ""


def _solve_mip(problem: Problem, numel: int, backend: str, opts: IlpSolver) -> _MipResult:
    """Build the scaled PuLP model, solve it, and read back one option per group."""
    import pulp

    allowed = problem.allowed
    gi, ji = np.nonzero(allowed)
    c = np.where(allowed, problem.costs, np.inf)
    v = np.where(allowed, problem.values, np.inf)
    vmin, cmin = v.min(axis=1), c.min(axis=1)
    dv = v[gi, ji] - vmin[gi]
    positive = dv[dv > 0]
    v_scale = float(positive.mean()) if positive.size else 1.0
    dc = c[gi, ji] - cmin[gi]
    rhs = _rhs_bits(dc, problem.capacity - float(cmin.sum()))
    obj, row = (dv / v_scale).tolist(), (dc / float(numel)).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pulp 3.x v4-migration notices
        prob = pulp.LpProblem("bitalloc_mckp", pulp.LpMinimize)
        add = getattr(prob, "add_variable", None)
        xs = [
            add(f"x{i}", 0, 1, cat=pulp.LpBinary)
            if add is not None
            else pulp.LpVariable(f"x{i}", 0, 1, cat=pulp.LpBinary)
            for i in range(len(gi))
        ]
        prob.setObjective(pulp.LpAffineExpression(list(zip(xs, obj))))
        bounds = np.searchsorted(gi, np.arange(problem.n_groups + 1))
        for g in range(problem.n_groups):
            terms = [(xs[i], 1.0) for i in range(bounds[g], bounds[g + 1])]
            prob.addConstraint(pulp.LpAffineExpression(terms) == 1, f"one_{g}")
        budget_terms = [(x, a) for x, a in zip(xs, row) if a != 0.0]
        prob.addConstraint(pulp.LpAffineExpression(budget_terms) <= rhs / numel, "budget")
        with tempfile.TemporaryDirectory(prefix="bitalloc-ilp-") as tmp:
            solver = _make_solver(pulp, backend, opts, tmp)
            with _quiet_stdout(not opts.msg):
                prob.solve(solver)
    mip_bound = _highs_bound(prob) if backend == "highs" else None
    if mip_bound is not None:
        mip_bound = mip_bound * v_scale + float(vmin.sum())
    text = pulp.LpStatus.get(prob.status, str(prob.status))
    if prob.sol_status == pulp.LpSolutionOptimal:
        status = "optimal"
    elif prob.sol_status == pulp.LpSolutionIntegerFeasible:
        status = "limit"
    else:
        return _MipResult(None, text, mip_bound)
    x = np.full(allowed.shape, -1.0)
    x[gi, ji] = [xv.varValue if xv.varValue is not None else 0.0 for xv in xs]
    if (x.max(axis=1) < 0.5).any():
        return _MipResult(None, text, mip_bound, "solver values are not one-hot")
    return _MipResult(np.argmax(x, axis=1).astype(np.int64), status, mip_bound)


def _rhs_bits(dc: np.ndarray, room: float) -> float:
    """Budget row right-hand side (bits above the cheapest plan), safe against tolerances.

    Integer costs: every plan's extra cost is a multiple of ``d = gcd(dc)``, so plans with
    extra cost ``<= floor(room / d) * d`` fit and all others exceed it by ``>= d``; the
    midpoint ``floor(room / d) * d + d / 2`` separates them with a margin of ``d / 2``.
    Otherwise shrink ``room`` by a relative ``1e-9``.
    """
    nz = dc[dc > 0]
    if nz.size and np.all(nz == np.round(nz)) and nz.max() < 2.0**53:
        d = float(np.gcd.reduce(nz.astype(np.int64)))
        return math.floor(room / d) * d + d / 2
    return room - 1e-9 * abs(room)


def _make_solver(pulp: Any, backend: str, opts: IlpSolver, tmp: str) -> Any:
    if backend == "highs":
        return pulp.HiGHS(
            msg=opts.msg, timeLimit=float(opts.time_limit_s), gapRel=float(opts.mip_rel_gap)
        )
    solver = pulp.PULP_CBC_CMD(
        msg=opts.msg, timeLimit=float(opts.time_limit_s), gapRel=float(opts.mip_rel_gap)
    )
    solver.tmpDir = tmp  # CBC's .mps/.sol files go to a folder removed afterwards
    return solver


def _highs_bound(prob: Any) -> float | None:
    try:
        bound = float(prob.solverModel.getInfo().mip_dual_bound)
    except Exception:  # noqa: BLE001 - informational only
        return None
    return bound if math.isfinite(bound) else None


def _gap(objective: float, bound: float) -> float:
    """Relative gap ``(objective - bound) / |objective|`` (0 when both are 0)."""
    diff = max(0.0, objective - bound)
    return diff / abs(objective) if objective else (0.0 if diff == 0 else math.inf)


@contextlib.contextmanager
def _quiet_stdout(enabled: bool) -> Iterator[None]:
    """Silence file descriptor 1 (HiGHS prints its banner from C++ even with msg=False)."""
    saved = -1
    if enabled:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            saved = os.dup(1)
    if saved < 0:
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        yield
    finally:
        _flush_c_stdout()
        os.dup2(saved, 1)
        os.close(saved)


def _flush_c_stdout() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):
        pass
