"""EvoPress building blocks: format ladders, level-switch mutation, resumable run state.

A group's *ladder* is its allowed options sorted by memory cost (ties: value, then index);
its *level* is its position on the ladder. The level-switch mutation of EvoPress (Sieberling
et al., "EvoPress: Accurate Dynamic Model Compression via Evolutionary Search", ICML 2025,
arXiv 2410.14649, sec. 3; algorithms.md section 1.3) raises one group one level and lowers
another one level. Pure numpy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..search._io import atomic_write_text
from ..search.problem import Problem

if TYPE_CHECKING:
    from ..search.solution import Solution
    from ..search.table import SensitivityTable

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Ladders:
    """Per-group option ladders: ``ladder[g, l]`` is the option at level ``l`` (-1 = none),
    ``pos[g, j]`` the level of option ``j`` (-1 = not allowed), ``top[g]`` the highest level."""

    ladder: np.ndarray  # [G, L] int64
    pos: np.ndarray  # [G, F] int64
    top: np.ndarray  # [G] int64

    @classmethod
    def build(cls, problem: Problem) -> Ladders:
        allowed = problem.allowed
        c = np.where(allowed, problem.costs, np.inf)
        v = np.where(allowed, problem.values, np.inf)
        idx = np.broadcast_to(np.arange(c.shape[1]), c.shape)
        order = np.lexsort((idx, v, c), axis=1)  # cost, then value, then index
        n_allowed = allowed.sum(axis=1)
        width = max(int(n_allowed.max()), 1) if n_allowed.size else 1
        ladder = np.where(np.arange(width) < n_allowed[:, None], order[:, :width], -1)
        pos = np.full(c.shape, -1, dtype=np.int64)
        rows = np.repeat(np.arange(c.shape[0]), width)
        keep = ladder.reshape(-1) >= 0
        pos[rows[keep], ladder.reshape(-1)[keep]] = np.tile(np.arange(width), c.shape[0])[keep]
        return cls(ladder=ladder.astype(np.int64), pos=pos, top=(n_allowed - 1).astype(np.int64))


def flip_count(rng: np.random.Generator, max_switches: int) -> int:
    """``k = min(U1, U2)``, ``U1, U2 ~ Uniform{1..max_switches}`` (EvoPress; for 3:
    P(1) = 5/9, P(2) = 3/9, P(3) = 1/9)."""
    return int(min(rng.integers(1, max_switches + 1), rng.integers(1, max_switches + 1)))


def mutate(
    problem: Problem,
    ladders: Ladders,
    parent: np.ndarray,
    rng: np.random.Generator,
    max_switches: int,
) -> np.ndarray | None:
    """One level-switch offspring of ``parent``, or ``None`` when the draw is rejected.

    ``k`` (:func:`flip_count`) times: raise a random group (untouched so far, not at its top,
    and whose extra bits one other group's lowering can make up) one level; then lower another
    untouched group one level, drawn among those whose saving brings memory back within the
    capacity (when the raise overshot it; with slack left the lowering happens with
    probability 1/2 when some group can go down, so free bits get used). Memory never
    exceeds the capacity; extra rows (BOPs, latency) are checked at the end and the offspring is
    rejected when one breaks.
    """
    rows = np.arange(problem.n_groups)
    costs = problem.costs
    child = parent.copy()
    cost = float(costs[rows, child].sum())
    touched = np.zeros(problem.n_groups, dtype=bool)
    for _ in range(flip_count(rng, max_switches)):
        level = ladders.pos[rows, child]
        up = np.flatnonzero(_compensable(problem, ladders, child, level, touched, cost))
        if up.size == 0:
            return None
        g1 = int(up[rng.integers(up.size)])
        new = int(ladders.ladder[g1, level[g1] + 1])
        cost += float(costs[g1, new] - costs[g1, child[g1]])
        child[g1], touched[g1] = new, True
        level[g1] += 1
        down_opt = ladders.ladder[rows, np.maximum(level - 1, 0)]
        saving = costs[rows, child] - np.where(down_opt >= 0, costs[rows, down_opt], np.inf)
        can = (level > 0) & ~touched
        over = cost - problem.capacity
        if over > 0:
            can &= saving >= over
        elif rng.random() < 0.5:
            continue
        down = np.flatnonzero(can)
        if down.size == 0:
            if over > 0:
                return None
            continue
        g2 = int(down[rng.integers(down.size)])
        cost -= float(saving[g2])
        child[g2], touched[g2] = int(down_opt[g2]), True
    return child if problem.fits(child) else None


def _compensable(
    problem: Problem,
    ladders: Ladders,
    child: np.ndarray,
    level: np.ndarray,
    touched: np.ndarray,
    cost: float,
) -> np.ndarray:
    """Groups that can go up one level such that the memory overshoot (if any) can be undone
    by lowering one other untouched group one level (mask ``[G]``)."""
    rows = np.arange(problem.n_groups)
    costs = problem.costs
    can_up = (level < ladders.top) & ~touched
    up_opt = ladders.ladder[rows, np.minimum(level + 1, ladders.top)]
    extra = np.where(can_up, costs[rows, up_opt] - costs[rows, child], np.inf)
    can_down = (level > 0) & ~touched
    down_opt = ladders.ladder[rows, np.maximum(level - 1, 0)]
    saving = np.where(can_down, costs[rows, child] - costs[rows, down_opt], 0.0)
    top2 = np.sort(saving)[-2:] if saving.size > 1 else np.array([0.0, *saving])
    best_other = np.where(saving >= top2[-1], top2[0], top2[-1])  # best saving of another group
    over = cost + extra - problem.capacity
    return can_up & ((over <= 0) | (best_other >= over))


def offspring(
    problem: Problem,
    ladders: Ladders,
    parent: np.ndarray,
    rng: np.random.Generator,
    n: int,
    max_switches: int,
    attempts_per_child: int = 20,
) -> list[np.ndarray]:
    """Up to ``n`` distinct offspring, none equal to the parent (EvoPress discards duplicates);
    at most ``attempts_per_child * n`` mutation draws."""
    seen = {parent.tobytes()}
    kids: list[np.ndarray] = []
    for _ in range(attempts_per_child * n):
        if len(kids) == n:
            break
        child = mutate(problem, ladders, parent, rng, max_switches)
        if child is not None and child.tobytes() not in seen:
            seen.add(child.tobytes())
            kids.append(child)
    return kids


def run_key(problem: Problem, identity: dict[str, Any]) -> str:
    """Hash of everything a checkpoint must match to be resumed: the problem arrays and the
    run's options (without ``generations``, so a run can be extended)."""
    h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    for a in (problem.values, problem.costs, problem.extra_costs, problem.extra_caps):
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    h.update(repr(problem.capacity).encode())
    return h.hexdigest()[:20]


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write the run state atomically (JSON; the RNG state's big integers are exact)."""
    atomic_write_text(path, json.dumps({"version": CHECKPOINT_VERSION, **state}, indent=1))


def load_state(path: str | os.PathLike[str], key: str) -> dict[str, Any] | None:
    """The saved state when ``path`` exists (``None`` otherwise); ValueError when it belongs to
    another run (different table, budget or options) or another version."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        state = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"`checkpoint` {str(p)!r} is not a readable EvoPress checkpoint: {e}"
        ) from e
    if not isinstance(state, dict):
        raise ValueError(f"`checkpoint` {str(p)!r} is not an EvoPress checkpoint (not an object)")
    if state.get("version") != CHECKPOINT_VERSION or state.get("run") != key:
        raise ValueError(
            f"`checkpoint` {str(p)!r} belongs to another run (different table, budget, "
            "options or version); delete it or pass another path"
        )
    return state


STATE_KEYS = ("parent", "fitness", "start_fitness", "history", "evaluations", "generation", "rng")


def check_state(state: dict[str, Any], problem: Problem, path: str | os.PathLike[str]) -> None:
    """Refuse a checkpoint whose body cannot be resumed on ``problem``: missing fields, or a
    parent of the wrong length, with a format index out of range or not allowed, or over the
    budget (ValueError naming the file and the field)."""
    where = f"`checkpoint` {os.fspath(path)!r}"
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}; delete it to start afresh")
    parent = state["parent"]
    n, m = problem.values.shape
    if (
        not isinstance(parent, list)
        or len(parent) != n
        or not all(isinstance(c, int) and not isinstance(c, bool) for c in parent)
    ):
        raise ValueError(f"{where}: `parent` must be a list of {n} format indices")
    choice = np.asarray(parent, dtype=np.int64)
    if choice.size and (choice.min() < 0 or choice.max() >= m):
        raise ValueError(f"{where}: `parent` has a format index outside 0..{m - 1}")
    if not problem.allowed[np.arange(n), choice].all():
        raise ValueError(f"{where}: `parent` gives a unit a format it does not allow")
    if not problem.fits(choice):
        raise ValueError(f"{where}: `parent` is over the budget of this run")
    numbers = ("fitness", "start_fitness", "evaluations", "generation")
    if not all(
        isinstance(state[k], (int, float)) and not isinstance(state[k], bool) for k in numbers
    ):
        raise ValueError(f"{where}: {', '.join(numbers)} must be numbers")
    if not isinstance(state["history"], list) or not isinstance(state["rng"], dict):
        raise ValueError(f"{where}: `history` must be a list and `rng` an object")
    if not 0 <= state["generation"] or not 0 <= state["evaluations"]:
        raise ValueError(f"{where}: `generation` and `evaluations` must be >= 0")


def finite(x: float) -> float:
    """``x`` as float, ``inf`` when it is NaN/inf (a broken candidate ranks last)."""
    x = float(x)
    return x if math.isfinite(x) else math.inf


def group_choice(problem: Problem, table: SensitivityTable, plan: Solution) -> np.ndarray:
    """A plan's choice per tie-merged group (the format index of each group's first unit)."""
    keys = table.space.keys
    units = np.array([keys.index(k) for k in plan.choice], dtype=np.int64)
    return units[[m[0] for m in problem.members]]
