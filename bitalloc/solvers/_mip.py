"""The MCKP as a 0/1 MIP in matrix form, and the backends that solve it.

Binary ``x_i`` for every allowed (group ``g_i``, option ``j_i``)::

    min  sum_i (v[g_i, j_i] - min_j v[g_i, j]) / s_v * x_i
    s.t. sum_{i: g_i = g} x_i = 1                                   for every group g
         sum_i (a_r[g_i, j_i] - min_j a_r[g_i, j]) / s_r * x_i <= b'_r / s_r   for every row r

Rows r are the memory bits and the budget's extra linear constraints. Shifting every row by
its per-group minimum is exact (one option per group) and keeps coefficients non-negative;
``s_v`` (mean positive shifted value) and ``s_r`` (sum over groups of the row's spread) make
every coefficient O(1). ``b'_r`` is snapped to the cost lattice when the row is integral (see
:func:`rhs`). Backends: PuLP with CBC or HiGHS (``highspy``), and
``scipy.optimize.milp`` (HiGHS, sparse matrices built in milliseconds).
"""

from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..search.problem import Problem
from ..search.solution import Status


@dataclass(frozen=True)
class MipResult:
    """What a MIP backend returned.

    ``status`` is ``OPTIMAL`` or ``LIMIT`` with a plan, ``INFEASIBLE`` when the backend proved
    no plan exists, and ``None`` when it gave no usable plan (``text`` says why: the backend's
    own status, or ``"error"`` when it crashed)."""

    choice: np.ndarray | None
    status: Status | None
    bound: float | None  # best proven lower bound on the objective (original units)
    detail: str = ""
    text: str = ""  # the backend's status text (default: the status's value)

    def __post_init__(self) -> None:
        if not self.text:
            object.__setattr__(self, "text", self.status.value if self.status else "no plan")


@dataclass(frozen=True)
class Model:
    """Scaled MIP arrays (see module doc). ``vmin`` and ``v_scale`` map objectives back."""

    gi: np.ndarray  # [n] group of every binary
    ji: np.ndarray  # [n] option of every binary
    obj: np.ndarray  # [n]
    rows: np.ndarray  # [R, n] scaled row coefficients (memory first)
    rhs: np.ndarray  # [R]
    vmin: float
    v_scale: float
    n_groups: int

    def objective(self, scaled: float) -> float:
        return scaled * self.v_scale + self.vmin

    def choice(self, x: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
        """One option per group from solver values, ``None`` unless one-hot within 0.5."""
        full = np.full(shape, -1.0)
        full[self.gi, self.ji] = x
        if (full.max(axis=1) < 0.5).any():
            return None
        return np.argmax(full, axis=1).astype(np.int64)


def build(problem: Problem) -> Model:
    allowed = problem.allowed
    gi, ji = np.nonzero(allowed)
    v = np.where(allowed, problem.values, np.inf)
    vmin = v.min(axis=1)
    dv = v[gi, ji] - vmin[gi]
    positive = dv[dv > 0]
    v_scale = float(positive.mean()) if positive.size else 1.0
    a = np.where(allowed[None], problem.row_costs(), np.inf)
    amin = a.min(axis=2)  # [R, G]
    rows, rhs = [], []
    for r, cap in enumerate(problem.row_caps()):
        d = a[r, gi, ji] - amin[r, gi]
        spread = float((np.where(allowed, a[r], -np.inf).max(axis=1) - amin[r]).sum())
        s = spread if spread > 0 else 1.0
        rows.append(d / s)
        rhs.append(snap_rhs(d, float(cap) - float(amin[r].sum())) / s)
    return Model(
        gi=gi,
        ji=ji,
        obj=dv / v_scale,
        rows=np.array(rows),
        rhs=np.array(rhs),
        vmin=float(vmin.sum()),
        v_scale=v_scale,
        n_groups=problem.n_groups,
    )


def snap_rhs(dc: np.ndarray, room: float) -> float:
    """Row right-hand side (cost above the cheapest plan), safe against tolerances.

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


def solve_scipy(model: Model, shape: tuple[int, int], opts: Any) -> MipResult:
    """``scipy.optimize.milp`` (HiGHS) with sparse constraint matrices."""
    from scipy import sparse
    from scipy.optimize import Bounds, LinearConstraint, milp

    n = len(model.gi)
    one_hot = sparse.csr_array((np.ones(n), (model.gi, np.arange(n))), shape=(model.n_groups, n))
    budget = sparse.csr_array(model.rows)
    res = milp(
        model.obj,
        integrality=np.ones(n),
        bounds=Bounds(0, 1),
        constraints=[
            LinearConstraint(one_hot, 1, 1),
            LinearConstraint(budget, -np.inf, model.rhs),
        ],
        options={
            "time_limit": float(opts.time_limit_s),
            "mip_rel_gap": float(opts.mip_rel_gap),
            "disp": bool(opts.msg),
        },
    )
    raw = getattr(res, "mip_dual_bound", None)
    bound = model.objective(raw) if raw is not None and math.isfinite(raw) else None
    if res.status == 2:
        return MipResult(None, Status.INFEASIBLE, None, str(res.message))
    if res.x is None or res.status not in (0, 1):
        return MipResult(None, None, bound, str(res.message), f"scipy status {res.status}")
    choice = model.choice(res.x, shape)
    if choice is None:
        return MipResult(None, None, bound, "solver values are not one-hot", str(res.message))
    return MipResult(choice, Status.OPTIMAL if res.status == 0 else Status.LIMIT, bound)


def solve_pulp(model: Model, shape: tuple[int, int], backend: str, opts: Any) -> MipResult:
    """PuLP with its bundled CBC, or HiGHS through ``highspy``."""
    import pulp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pulp 3.x v4-migration notices
        prob = pulp.LpProblem("bitalloc_mckp", pulp.LpMinimize)
        add = getattr(prob, "add_variable", None)
        xs = [
            add(f"x{i}", 0, 1, cat=pulp.LpBinary)
            if add is not None
            else pulp.LpVariable(f"x{i}", 0, 1, cat=pulp.LpBinary)
            for i in range(len(model.gi))
        ]
        prob.setObjective(pulp.LpAffineExpression(list(zip(xs, model.obj.tolist()))))
        bounds = np.searchsorted(model.gi, np.arange(model.n_groups + 1))
        for g in range(model.n_groups):
            terms = [(xs[i], 1.0) for i in range(bounds[g], bounds[g + 1])]
            prob.addConstraint(pulp.LpAffineExpression(terms) == 1, f"one_{g}")
        for r, (row, rhs) in enumerate(zip(model.rows.tolist(), model.rhs.tolist())):
            terms = [(x, a) for x, a in zip(xs, row) if a != 0.0]
            prob.addConstraint(pulp.LpAffineExpression(terms) <= rhs, f"row_{r}")
        with tempfile.TemporaryDirectory(prefix="bitalloc-ilp-") as tmp:
            prob.solve(_pulp_solver(pulp, backend, opts, tmp))
    bound = _highs_bound(prob) if backend == "highs" else None
    if bound is not None:
        bound = model.objective(bound)
    text = pulp.LpStatus.get(prob.status, str(prob.status))
    if prob.status == pulp.LpStatusInfeasible:
        return MipResult(None, Status.INFEASIBLE, None)
    if prob.sol_status == pulp.LpSolutionOptimal:
        status = Status.OPTIMAL
    elif prob.sol_status == pulp.LpSolutionIntegerFeasible:
        status = Status.LIMIT
    else:
        return MipResult(None, None, bound, text=text)
    x = np.array([xv.varValue if xv.varValue is not None else 0.0 for xv in xs])
    choice = model.choice(x, shape)
    if choice is None:
        return MipResult(None, None, bound, "solver values are not one-hot", text)
    return MipResult(choice, status, bound)


def lp_relaxation(model: Model) -> float:
    """Optimum of the LP relaxation with every row (HiGHS via ``scipy.optimize.linprog``);
    ``-inf`` when it cannot be solved (then it bounds nothing)."""
    from scipy import sparse
    from scipy.optimize import linprog

    n = len(model.gi)
    one_hot = sparse.csr_array((np.ones(n), (model.gi, np.arange(n))), shape=(model.n_groups, n))
    res = linprog(
        model.obj,
        A_ub=sparse.csr_array(model.rows),
        b_ub=model.rhs,
        A_eq=one_hot,
        b_eq=np.ones(model.n_groups),
        bounds=(0, 1),
        method="highs",
    )
    if res.status == 2:
        return math.inf
    return model.objective(float(res.fun)) if res.status == 0 else -math.inf


def _pulp_solver(pulp: Any, backend: str, opts: Any, tmp: str) -> Any:
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
