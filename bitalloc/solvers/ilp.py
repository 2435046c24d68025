"""Exact multiple-choice knapsack by integer linear programming (CBC via PuLP, or HiGHS)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.choices import Choice, set_choice
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from . import SOLVERS
from ._mckp import best_value_choice, feasible_start, greedy_choice, lp_bound, repair
from ._mip import MipResult, lp_relaxation, solve_pulp, solve_scipy
from ._mip import build as build_model
from .base import (
    SolverBase,
    infeasible,
    joint_message,
    make_solution,
    provenance,
    relative_gap,
    start,
)
from .lagrangian import solve_problem

log = logging.getLogger(__name__)


class MipBackend(Choice):
    """The MIP solver behind ``ilp``."""

    AUTO = "auto"
    CBC = "cbc"
    HIGHS = "highs"
    SCIPY = "scipy"


BACKENDS = MipBackend.values()
AUTO_HIGHS_ABOVE = 1_000  # binaries; "auto" uses CBC up to here, scipy/HiGHS above


@SOLVERS.register("ilp")
@dataclass(frozen=True)
class IlpSolver(SolverBase):
    """Exact MCKP as a 0/1 ILP, solved by CBC (PuLP) or HiGHS (scipy or highspy).

    Binary ``x[g, j]`` for every allowed (group, format)::

        min  sum_gj v[g, j] x[g, j]
        s.t. sum_j x[g, j] = 1                     for every group g
             sum_gj c[g, j] x[g, j] <= B           memory (bits)
             sum_gj a_r[g, j] x[g, j] <= b_r       every extra budget row r (BOPs, latency)

    the formulation of HAWQ-V3 (Yao et al., ICML 2021) and CalibTIP (Hubara et al., 2021);
    MCKP background in Kellerer, Pferschy & Pisinger, *Knapsack Problems* (2004), ch. 11.
    For numerical sanity values and rows are shifted by each group's minimum and scaled to
    O(1) (:mod:`bitalloc.solvers._mip`). Integral rows (memory bits, BOPs) have their
    right-hand side snapped to the cost lattice plus half a step, so solver tolerances can
    neither admit an over-budget plan nor cut off a feasible one; float rows are tightened by
    1e-9 relative. The rounded plan is checked exactly; a residual overshoot is repaired by
    greedy moves. The greedy plan is returned instead when it is better (possible within
    ``mip_rel_gap`` or at a time limit). Rows that are jointly unsatisfiable give INFEASIBLE.

    Above 1,000 binaries the heuristic plan (``lagrangian``'s LP rounding for a memory-only
    budget, else greedy) is checked first against the LP relaxation bound: when its gap is
    within ``mip_rel_gap`` it is returned as OPTIMAL without branch and bound (the proof a MIP
    solver gives at its root node; ``meta["mip_backend"]`` is then None). Per-channel tables with
    few distinct shapes are highly symmetric, and HiGHS may not close a 1e-4 gap there in a
    minute while the LP rounding is within 1e-5 (benchmarks/solver_scale.py).

    Args:
        backend: ``"cbc"`` (PuLP's bundled CBC), ``"highs"`` (PuLP + ``highspy``),
            ``"scipy"`` (``scipy.optimize.milp``, HiGHS with sparse matrices) or ``"auto"``
            (CBC up to 1,000 binaries, scipy above: CBC took 40-70 s at 100,000 binaries
            where HiGHS took 5-10 s, reference/environment.md section 2, and 4 s vs 0.05 s
            already at 1,000 binaries on per-channel tables with few distinct shapes,
            benchmarks/solver_scale.py).
        time_limit_s: wall-clock limit; a plan found by then is returned with status LIMIT
            and the proven relative gap in the message.
        mip_rel_gap: stop when (incumbent - bound) / incumbent falls below this.
        msg: let the MIP solver print its log.

    ``meta`` records ``backend``, ``n_binaries``, ``solver_status``, ``lp_bound`` (optimum of
    the LP relaxation with every row), ``mip_bound`` (HiGHS's dual bound, else None) and
    ``mip_gap`` (a proven upper bound on ``(objective - optimum) / objective``).

    Example:
        >>> sol = IlpSolver(time_limit_s=10).solve(table, Budget.avg_bits(3.0))
    """

    backend: MipBackend | str = MipBackend.AUTO
    time_limit_s: float = 60.0
    mip_rel_gap: float = 1e-4
    msg: bool = False

    name: ClassVar[str]
    exact: ClassVar[bool] = True

    def __post_init__(self) -> None:
        set_choice(self, "backend", MipBackend)
        t = self.time_limit_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"`time_limit_s` must be a positive number, got {t!r}")
        g = self.mip_rel_gap
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0 <= g < 1:
            raise ValueError(f"`mip_rel_gap` must be in [0, 1), got {g!r}")

    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """The optimal plan under ``budget`` (INFEASIBLE when no plan meets every row)."""
        problem, started, early = start(self, table, budget)
        if early is not None:
            return early
        n_bin = int(problem.allowed.sum())
        best_value = best_value_choice(problem)
        if problem.fits(best_value):  # no row binds
            meta = provenance(self, table, budget, started)
            meta.update(mip_backend=None, n_binaries=n_bin, mip_gap=0.0)
            return make_solution(problem, table, budget, best_value, Status.OPTIMAL, meta)
        backend = self._backend(n_bin)
        large = n_bin > AUTO_HIGHS_ABOVE
        alt, alt_name, bound = self._heuristic(problem, large)
        meta = provenance(self, table, budget, started)
        meta.update(mip_backend=backend, n_binaries=n_bin, lp_bound=bound)
        if large and alt is not None:  # the MIP's root-node proof, without branch and bound
            gap = relative_gap(problem.total(alt)[0], bound)
            if gap <= self.mip_rel_gap:
                meta.update(solver_status=f"{alt_name} plan within mip_rel_gap of the LP bound")
                meta.update(mip_backend=None, mip_bound=None, mip_gap=gap)
                return make_solution(problem, table, budget, alt, Status.OPTIMAL, meta)
        from pulp import PulpSolverError

        try:
            result = _solve_mip(problem, backend, self)
        except (PulpSolverError, OSError) as e:  # a crashed solver falls back to greedy
            log.warning("ILP backend %s failed (%s); using the %s plan", backend, e, alt_name)
            result = MipResult(None, None, None, f"{type(e).__name__}: {e}", text="error")
        meta.update(solver_status=result.text, mip_bound=result.bound)
        if result.status is Status.INFEASIBLE:
            return infeasible(problem, table, budget, meta, joint_message(problem))
        best = bound if result.bound is None else max(bound, result.bound)
        status, message, choice = self._interpret(problem, result, backend, best, alt, alt_name)
        if choice is None:
            return infeasible(problem, table, budget, meta, message)
        gap = relative_gap(problem.total(choice)[0], best)
        if status is Status.OPTIMAL:  # the solver proved gap <= mip_rel_gap
            gap = min(gap, float(self.mip_rel_gap))
        meta.update(mip_gap=gap)
        return make_solution(problem, table, budget, choice, status, meta, message)

    @staticmethod
    def _heuristic(problem: Problem, large: bool) -> tuple[np.ndarray | None, str, float]:
        """``(plan or None, its name, LP relaxation bound)``: the LP-rounding plan of
        ``lagrangian`` for a large memory-only problem, else the greedy plan."""
        if large and not problem.n_extra:
            res = solve_problem(problem, "hull")
            return res.choice, "lagrangian", res.lp_bound
        first = feasible_start(problem)
        plan = None if first is None else greedy_choice(problem, first)
        bound = lp_relaxation(build_model(problem)) if problem.n_extra else lp_bound(problem)
        return plan, "greedy", bound

    def _backend(self, n_binaries: int) -> str:
        if self.backend == "highs" and importlib.util.find_spec("highspy") is None:
            raise ValueError(
                "`backend`='highs' needs the highspy package "
                "(pip install 'bitalloc[highs]'); valid without it: 'cbc', 'scipy', 'auto'"
            )
        if self.backend == "auto":
            return "scipy" if n_binaries > AUTO_HIGHS_ABOVE else "cbc"
        return self.backend

    def _interpret(
        self,
        problem: Problem,
        result: MipResult,
        backend: str,
        bound: float,
        alt: np.ndarray | None,
        alt_name: str,
    ) -> tuple[Status, str, np.ndarray | None]:
        if result.choice is None:
            if result.text == "error":
                msg = f"ILP ({backend}) failed ({result.detail}); "
            else:
                msg = (
                    f"ILP ({backend}) returned no plan within time_limit_s="
                    f"{self.time_limit_s:g} (solver status {result.text!r}"
                    f"{'; ' + result.detail if result.detail else ''}); "
                )
            if alt is None:
                return Status.FEASIBLE, msg + f"and {alt_name} found none either", None
            return Status.FEASIBLE, msg + f"returning the {alt_name} plan", alt
        choice, notes = result.choice, []
        status = Status.OPTIMAL if result.status is Status.OPTIMAL else Status.LIMIT
        if not problem.fits(choice):
            try:
                choice, status = repair(problem, choice), Status.FEASIBLE
                notes.append(
                    "the MIP plan exceeded the exact budget by rounding and was repaired "
                    "by greedy moves"
                )
            except RuntimeError:
                if alt is None:
                    return Status.FEASIBLE, "the MIP plan breaks a budget row", None
                choice, status = alt, Status.FEASIBLE
                notes.append(f"the MIP plan broke a budget row; returning the {alt_name} plan")
        # Within mip_rel_gap (or at a time limit) the heuristic can be better: keep the best.
        if alt is not None and problem.total(alt)[0] < problem.total(choice)[0]:
            choice = alt
            notes.append(f"the {alt_name} plan beat the MIP incumbent and is returned")
        if status is Status.LIMIT:
            gap = relative_gap(problem.total(choice)[0], bound)
            notes.insert(
                0,
                f"time limit {self.time_limit_s:g}s reached before optimality "
                f"was proven; relative gap <= {gap:.3g}",
            )
        return status, "; ".join(notes), choice


def _solve_mip(problem: Problem, backend: str, opts: IlpSolver) -> MipResult:
    """Build the scaled model (:mod:`bitalloc.solvers._mip`) and solve it on ``backend``."""
    model = build_model(problem)
    shape = problem.values.shape
    with _quiet_stdout(not opts.msg):
        if backend == "scipy":
            return solve_scipy(model, shape, opts)
        return solve_pulp(model, shape, backend, opts)


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
