"""Shared plumbing of the anchor baselines (``llamacpp_km``, ``nncf_ratio``, ``mlx_threshold``).

These solvers re-implement the fixed mixing rules of other toolkits on a (table, budget) pair,
so they need a common notion of "narrower/wider format" and of "the closest format a unit may
take". Both work on the tie-merged :class:`~bitalloc.search.problem.Problem` (a tie group is one
row; its options are the formats allowed for all its members).

- Nominal width of format ``j``: its exact effective bits per weight averaged over the units
  whose shape it supports, ``8 * sum_i nbytes_j(shape_i) / sum_i numel_i`` (``bits`` when it
  supports none). Formats are ordered by (nominal width, position in the space).
- Closest allowed option of a group to a target format ``t``: ``t`` itself when allowed, else
  the allowed ``j`` minimising ``(|w_j - w_t|, w_j, j)`` (equal distance -> the narrower one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..search.budget import Budget
from ..search.formats import QuantFormat
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.space import SearchSpace
from ..search.table import SensitivityTable
from .base import infeasible, make_solution, provenance, start


def nominal_bits(space: SearchSpace) -> np.ndarray:
    """Nominal effective bits per weight of every format of ``space`` (see module doc)."""
    out = np.empty(len(space.formats), dtype=np.float64)
    for j, f in enumerate(space.formats):
        shapes = [u.shape for u in space.units if f.supports(u.shape)]
        if shapes:
            out[j] = 8.0 * sum(f.nbytes(s) for s in shapes) / sum(math.prod(s) for s in shapes)
        else:
            out[j] = float(f.bits)
    return out


def width_order(nominal: np.ndarray) -> list[int]:
    """Format indices from narrowest to widest (ties -> position in the space)."""
    return sorted(range(len(nominal)), key=lambda j: (float(nominal[j]), j))


def format_index(space: SearchSpace, key: str, arg: str) -> int:
    """Column of format ``key`` in ``space``; ValueError naming ``arg`` otherwise."""
    try:
        canon = QuantFormat.parse(key).key
    except (ValueError, TypeError):
        canon = str(key)
    if canon not in space.keys:
        raise ValueError(
            f"`{arg}` {key!r} is not in the search space; formats: {', '.join(space.keys)}"
        )
    return space.keys.index(canon)


def snap(problem: Problem, nominal: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per group, ``target[g]`` if allowed else the closest allowed option (module doc)."""
    target = np.asarray(target, dtype=np.int64)
    allowed = problem.allowed
    out = target.copy()
    rows = np.arange(problem.n_groups)
    for g in np.flatnonzero(~allowed[rows, target]):
        idx = np.flatnonzero(allowed[g])
        t = int(target[g])
        key = np.lexsort((idx, nominal[idx], np.abs(nominal[idx] - nominal[t])))
        out[g] = int(idx[key[0]])
    return out


def group_numel(problem: Problem, space: SearchSpace) -> np.ndarray:
    """Number of weights of every group."""
    return np.array(
        [sum(space.units[i].numel for i in m) for m in problem.members], dtype=np.float64
    )


def check_optional_key(value: object, arg: str) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"`{arg}` must be a format key or None, got {value!r}")


@dataclass(frozen=True)
class Split:
    """A two-precision plan family: every group at ``low`` except those raised to ``high``.

    ``part`` are the groups allowing both formats (the only ones the rule moves); every other
    group sits at its closest allowed option to ``low``. ``score[k]`` is the per-weight
    sensitivity of ``part[k]``: ``(V[g, low] - V[g, high]) / N_g`` (summed predicted loss of
    the group's members per weight of the group); ``dcost[k] = C[g, high] - C[g, low]``.
    """

    low: int
    high: int | None
    base: np.ndarray
    part: np.ndarray
    score: np.ndarray
    weights: np.ndarray
    dcost: np.ndarray

    def choice(self, raise_mask: np.ndarray) -> np.ndarray:
        """Per-group choice with ``part[raise_mask]`` at ``high``."""
        out = self.base.copy()
        if self.high is not None:
            out[self.part[np.asarray(raise_mask, dtype=bool)]] = self.high
        return out


def make_split(
    problem: Problem, space: SearchSpace, nominal: np.ndarray, low: int, high: int | None
) -> Split:
    """The :class:`Split` of ``problem`` for formats ``low`` < ``high``."""
    base = snap(problem, nominal, np.full(problem.n_groups, low, dtype=np.int64))
    if high is None:
        empty = np.zeros(0)
        return Split(low, None, base, np.zeros(0, dtype=np.int64), empty, empty, empty)
    allowed = problem.allowed
    part = np.flatnonzero(allowed[:, low] & allowed[:, high])
    numel = group_numel(problem, space)[part]
    dv = problem.values[part, low] - problem.values[part, high]
    return Split(
        low=low,
        high=high,
        base=base,
        part=part,
        score=dv / numel,
        weights=numel,
        dcost=problem.costs[part, high] - problem.costs[part, low],
    )


def bracket(
    problem: Problem,
    nominal: np.ndarray,
    low: int | None,
    high: int | None,
) -> tuple[int, int | None] | None:
    """Default (low, high): the widest ``low`` whose all-low plan fits, ``high`` the next wider.

    A given ``low``/``high`` is kept; ``None`` when no candidate ``low`` fits (the caller
    reports INFEASIBLE or falls back to the cheapest plan). Raises ValueError when the given
    ``low`` is not narrower than the given ``high``.
    """
    order = width_order(nominal)
    rank = {j: r for r, j in enumerate(order)}
    if low is not None and high is not None and rank[low] >= rank[high]:
        raise ValueError("`low` must be a narrower format than `high`")
    if low is None:
        cands = [j for j in order if high is None or rank[j] < rank[high]]
        fitting = [
            j
            for j in cands
            if problem.fits(snap(problem, nominal, np.full(problem.n_groups, j, dtype=np.int64)))
        ]
        if not fitting:
            return None
        low = fitting[-1]
    if high is None:
        nxt = rank[low] + 1
        high = order[nxt] if nxt < len(order) else None
    return low, high


def need(problem: Problem, budget: Budget, space: SearchSpace, choice: np.ndarray) -> str:
    """The budget ``choice`` needs, in the budget's unit."""
    bits = problem.total(choice)[1]
    unit = "avg bits" if budget.kind.value == "avg_bits" else "bytes"
    return f"{budget.from_bits(bits, space):.6g} {unit}"


def two_precision_start(
    solver: Any, table: SensitivityTable, budget: Budget, rule: str
) -> tuple[Problem, Split | None, dict[str, Any], Solution | None]:
    """Shared opening of the two-precision rules (``nncf_ratio``, ``mlx_threshold``).

    Returns ``(problem, split, meta, early)``: ``early`` is the result to return as is (budget
    below the cheapest plan, no two-precision pair fitting, or every unit at ``low`` over
    budget); otherwise ``split`` holds the low/high pair and per-group sensitivity scores.
    """
    problem, started, early = start(solver, table, budget)
    if early is not None:
        return problem, None, {}, early
    space = table.space
    nominal = nominal_bits(space)
    low = format_index(space, solver.low, "low") if solver.low is not None else None
    high = format_index(space, solver.high, "high") if solver.high is not None else None
    pair = bracket(problem, nominal, low, high)
    meta = provenance(solver, table, budget, started)
    if pair is None:  # no all-low plan fits, but the cheapest plan does
        meta["rule"] = {"name": rule, "fallback": "cheapest"}
        msg = "no two-precision plan fits: every group at its cheapest allowed format"
        sol = make_solution(problem, table, budget, problem.cheapest(), Status.FEASIBLE, meta, msg)
        return problem, None, meta, sol
    split = make_split(problem, space, nominal, *pair)
    if not problem.fits(split.base):
        msg = (
            f"every unit at `low` {space.keys[split.low]} needs "
            f"{need(problem, budget, space, split.base)}, above the budget {budget.describe()}"
        )
        return problem, None, meta, infeasible(problem, table, budget, meta, message=msg)
    return problem, split, meta, None
