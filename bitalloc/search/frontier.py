"""Frontier: several plans over budgets (size vs loss), with optional measured values.

A point ``p`` dominates ``q`` when ``bytes(p) <= bytes(q)`` and ``loss(p) <= loss(q)`` with
one inequality strict; the Pareto front keeps the non-dominated points (Deb, *Multi-Objective
Optimization Using Evolutionary Algorithms*, 2001, ch. 2). Loss is the table's predicted sum
or a measured value (``measured[i]["kl"]``, ...).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_write, atomic_write_text, read_json
from .solution import Solution
from .table import _jsonable

FRONTIER_VERSION = 1
PREDICTED = "predicted"


@dataclass(frozen=True, slots=True)
class Frontier:
    """Plans (feasible or not) with per-point measured values.

    Args:
        points: the plans, e.g. one per budget; INFEASIBLE ones keep their message.
        measured: one mapping per point (``{"kl": ..., "ppl": ...}``; empty = not measured),
            or ``()`` for none at all.
        meta: provenance (solver, budgets, ...).

    Example:
        >>> front = bitalloc.frontier(table, [2.5, 3.0, 3.5], solver="ilp")
        >>> front.pareto().plot("pareto.png"); front.to_frame()
    """

    points: tuple[Solution, ...]
    measured: tuple[Mapping[str, float], ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        points = tuple(self.points)
        if not all(isinstance(p, Solution) for p in points):
            raise TypeError("`points` must hold Solutions")
        measured = tuple(self.measured) or tuple({} for _ in points)
        if len(measured) != len(points):
            raise ValueError(f"`measured` needs {len(points)} entries, got {len(measured)}")
        clean = []
        for m in measured:
            if not isinstance(m, Mapping):
                raise TypeError(f"`measured` entries must be mappings, got {type(m).__name__}")
            clean.append({str(k): float(v) for k, v in m.items()})
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "measured", tuple(clean))
        object.__setattr__(self, "meta", dict(self.meta))

    def __len__(self) -> int:
        return len(self.points)

    def metrics(self) -> list[str]:
        """Measured value names present on some point, in first-seen order."""
        return list(dict.fromkeys(k for m in self.measured for k in m))

    def loss(self, i: int, by: str = PREDICTED) -> float:
        """Point ``i``'s loss: predicted objective or ``measured[i][by]`` (nan when absent)."""
        if by == PREDICTED:
            return self.points[i].objective
        return self.measured[i].get(by, math.nan)

    # ------------------------------------------------------------------ transforms
    def pareto(self, by: str = PREDICTED) -> Frontier:
        """Feasible points no other point dominates in (bytes, loss ``by``), by size.

        Along the result bytes increase and loss strictly decreases; of equal points the
        first is kept. Points without a value for ``by`` are dropped.
        """
        self._check_metric(by)
        idx = [
            i for i, p in enumerate(self.points) if p.success and not math.isnan(self.loss(i, by))
        ]
        front = pareto_indices([(self.points[i].nbytes, self.loss(i, by)) for i in idx])
        return self._subset([idx[k] for k in front])

    def at(self, avg_bits: Sequence[float], by: str = PREDICTED) -> Frontier:
        """Per budget (average bits) the feasible point of least loss ``by`` within it, in the
        order given; budgets no point fits are left out. Reads a dense Pareto set (``nsga2``)
        at the budgets of a sweep."""
        self._check_metric(by)
        idx = []
        for b in avg_bits:
            fits = [
                i
                for i, p in enumerate(self.points)
                if p.success and p.avg_bits <= b and not math.isnan(self.loss(i, by))
            ]
            if fits:
                idx.append(min(fits, key=lambda i: (self.loss(i, by), self.points[i].nbytes)))
        return self._subset(idx)

    def evaluate(self, fn: Callable[[Solution], Any], key: str = "kl") -> Frontier:
        """A new Frontier with ``fn(plan)`` added to every feasible point's measured values.

        ``fn`` returns a number (stored under ``key``) or a mapping name -> number (e.g.
        ``{"kl": ..., "ppl": ...}``). Equal plans are measured once.
        """
        if not callable(fn):
            raise TypeError(f"`fn` must be callable, got {type(fn).__name__}")
        cache: dict[tuple[str, ...], dict[str, float]] = {}
        out = []
        for p, m in zip(self.points, self.measured):
            if not p.success:
                out.append(dict(m))
                continue
            if p.choice not in cache:
                value = fn(p)
                cache[p.choice] = (
                    {str(k): float(v) for k, v in value.items()}
                    if isinstance(value, Mapping)
                    else {key: float(value)}
                )
            out.append({**m, **cache[p.choice]})
        return Frontier(self.points, tuple(out), self.meta)

    def merge(self, *others: Frontier) -> Frontier:
        """All points of ``self`` and ``others`` (e.g. two solvers, for one plot)."""
        pts, meas = list(self.points), list(self.measured)
        for o in others:
            if not isinstance(o, Frontier):
                raise TypeError(f"can only merge Frontiers, got {type(o).__name__}")
            pts += o.points
            meas += o.measured
        return Frontier(tuple(pts), tuple(meas), self.meta)

    def _subset(self, idx: Sequence[int]) -> Frontier:
        return Frontier(
            tuple(self.points[i] for i in idx), tuple(self.measured[i] for i in idx), self.meta
        )

    def _check_metric(self, by: str) -> None:
        if by != PREDICTED and by not in self.metrics():
            raise ValueError(
                f"`by` must be {PREDICTED!r} or a measured value {self.metrics()}, got {by!r}"
            )

    # ------------------------------------------------------------------ views
    def to_frame(self) -> Any:
        """pandas DataFrame, one row per point: budget, avg_bits, bytes, predicted_loss, the
        measured values (kl, ppl, ... when present), solver, status, message."""
        import pandas as pd

        metrics = self.metrics()
        rows = []
        for p, m in zip(self.points, self.measured):
            budget = p.meta.get("budget") or {}
            row = {
                "budget": budget.get("value", math.nan),
                "avg_bits": p.avg_bits,
                "bytes": p.nbytes if p.success else None,
                "predicted_loss": p.objective,
            }
            row.update({k: m.get(k, math.nan) for k in metrics})
            row.update(solver=_series(p), status=p.status.value, message=p.message)
            rows.append(row)
        cols = ["budget", "avg_bits", "bytes", "predicted_loss", *metrics]
        return pd.DataFrame(rows, columns=[*cols, "solver", "status", "message"])

    def plot(self, path: str | os.PathLike[str], by: str = PREDICTED, title: str = "") -> Path:
        """Write a Pareto PNG: avg bits (x) vs loss ``by`` (y, log scale when positive), one
        series per solver (``meta["source"]`` or ``meta["solver"]`` of each point)."""
        self._check_metric(by)
        import matplotlib

        matplotlib.use("Agg")  # headless; a no-op when already set
        from matplotlib.figure import Figure

        series: dict[str, list[tuple[float, float]]] = {}
        for i, p in enumerate(self.points):
            y = self.loss(i, by)
            if p.success and math.isfinite(y):
                series.setdefault(_series(p), []).append((p.avg_bits, y))
        fig = Figure(figsize=(6.4, 4.4), dpi=110)
        ax = fig.add_subplot()
        for name, xy in series.items():
            xy.sort()
            ms = 4 if len(xy) <= 60 else 1.5  # dense Pareto sets (nsga2): small markers
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", ms=ms, label=name)
        ys = [y for xy in series.values() for _, y in xy]
        if ys and min(ys) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("average bits per weight")
        ax.set_ylabel("predicted loss" if by == PREDICTED else f"measured {by}")
        ax.set_title(title or "bitalloc frontier")
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend()
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON form; each distinct search space is stored once (``spaces``)."""
        spaces: list[dict[str, Any]] = []
        points = []
        for p in self.points:
            d = p.to_dict()
            space = d.pop("space")
            if space not in spaces:
                spaces.append(space)
            d["space_index"] = spaces.index(space)
            points.append(d)
        return {
            "type": "bitalloc.Frontier",
            "version": FRONTIER_VERSION,
            "meta": _jsonable(self.meta),
            "spaces": spaces,
            "points": points,
            "measured": [dict(m) for m in self.measured],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Frontier:
        if not isinstance(d, Mapping) or d.get("type") != "bitalloc.Frontier":
            raise ValueError('not a bitalloc frontier: missing "type": "bitalloc.Frontier"')
        if d.get("version") != FRONTIER_VERSION:
            raise ValueError(f"unsupported frontier version {d.get('version')!r}")
        try:
            spaces = d["spaces"]
            points = tuple(
                Solution.from_dict({**p, "space": spaces[p["space_index"]]}) for p in d["points"]
            )
            return cls(points, tuple(d.get("measured", ())), d.get("meta", {}))
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"malformed frontier: {type(e).__name__}: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Frontier:
        """Read a file written by :meth:`save`; malformed files raise ValueError."""
        return cls.from_dict(read_json(path, "frontier"))


def _series(p: Solution) -> str:
    return str(p.meta.get("source") or p.meta.get("solver") or "plan")


def pareto_indices(
    points: Sequence[tuple[float, float]], *, keep_duplicates: bool = False
) -> list[int]:
    """Indices of the points no other point dominates (both coordinates minimised), by
    increasing first coordinate, so the second strictly decreases along them. Of equal points
    the first is kept, or all of them with ``keep_duplicates``."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    keep: list[int] = []
    for i in order:
        if not keep or points[i][1] < points[keep[-1]][1]:
            keep.append(i)
        elif keep_duplicates and tuple(points[i]) == tuple(points[keep[-1]]):
            keep.append(i)
    return keep
