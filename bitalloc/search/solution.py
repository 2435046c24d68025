"""Solutions: one format per unit, with status, objective, exact cost and provenance."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ._io import atomic_write_text, read_json
from .formats import QuantFormat
from .space import SearchSpace
from .table import _jsonable

SOLUTION_VERSION = 1


class Status(str, Enum):
    """Outcome of a solve."""

    OPTIMAL = "optimal"
    """Proven optimal for the predicted objective (within the solver's gap)."""
    FEASIBLE = "feasible"
    """Fits the budget; optimality not proven (heuristic solver)."""
    INFEASIBLE = "infeasible"
    """No assignment fits the budget; ``message`` gives the minimum achievable budget."""
    LIMIT = "limit"
    """A time or iteration limit stopped the solver; the assignment (if any) fits the budget."""


@dataclass(frozen=True, slots=True)
class Solution:
    """A plan: ``choice[i]`` is the format key of ``space.units[i]``.

    An INFEASIBLE solution has an empty ``choice``. ``objective`` is the table's predicted
    loss (sum over units); ``meta`` records who made it and from what.
    """

    space: SearchSpace
    choice: tuple[str, ...]
    status: Status
    objective: float = math.nan
    message: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    formats: tuple[QuantFormat, ...] = field(init=False, repr=False, compare=False)
    """Per unit its :class:`QuantFormat` (parsed once; ``choice`` holds the keys)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "choice", tuple(self.choice))
        object.__setattr__(self, "meta", dict(self.meta))
        object.__setattr__(self, "formats", ())
        if self.status is Status.INFEASIBLE:
            if self.choice:
                raise ValueError("an INFEASIBLE solution has no assignment")
            return
        if len(self.choice) != len(self.space):
            raise ValueError(
                f"`choice` has {len(self.choice)} entries for {len(self.space)} units"
            )
        for u, key in zip(self.space.units, self.choice):
            if key not in u.allowed:
                raise ValueError(
                    f"unit {u.name!r} cannot take format {key!r}; allowed {u.allowed}"
                )
        for label, idx in self.space.tie_groups().items():
            if len({self.choice[i] for i in idx}) > 1:
                raise ValueError(f"tie group {label!r} is assigned different formats")
        by_key = {f.key: f for f in self.space.formats}
        object.__setattr__(self, "formats", tuple(by_key[k] for k in self.choice))

    # ------------------------------------------------------------------ views
    @property
    def success(self) -> bool:
        return self.status is not Status.INFEASIBLE and bool(self.choice)

    @property
    def assignment(self) -> dict[str, QuantFormat]:
        """Unit name -> format."""
        return {u.name: f for u, f in zip(self.space.units, self.formats)}

    @property
    def nbytes(self) -> int:
        """Exact stored bytes of all units (0 when infeasible)."""
        return sum(f.nbytes(u.shape) for u, f in zip(self.space.units, self.formats))

    @property
    def avg_bits(self) -> float:
        """Effective bits per weight, every overhead counted (nan when infeasible)."""
        return 8.0 * self.nbytes / self.space.numel if self.choice else math.nan

    def histogram(self) -> dict[str, dict[str, float]]:
        """Format key -> units and share of weights."""
        units: Counter[str] = Counter()
        weights: Counter[str] = Counter()
        for u, k in zip(self.space.units, self.choice):
            units[k] += 1
            weights[k] += u.numel
        total = self.space.numel
        return {
            k: {"units": units[k], "weight_share": weights[k] / total}
            for k in self.space.keys
            if units[k]
        }

    def summary(self) -> str:
        """A short human-readable report."""
        lines = [f"status: {self.status.value}"]
        if self.message:
            lines.append(f"message: {self.message}")
        if self.success:
            lines.append(f"units: {len(self.space)}  weights: {self.space.numel:,}")
            lines.append(f"avg bits: {self.avg_bits:.4f}  bytes: {self.nbytes:,}")
            lines.append(f"predicted loss: {self.objective:.6g}")
            for k, h in self.histogram().items():
                lines.append(
                    f"  {k:<16} {h['units']:>5} units  {100 * h['weight_share']:6.2f}% of weights"
                )
        prov = {
            k: self.meta[k] for k in ("solver", "estimator", "model", "budget") if k in self.meta
        }
        if prov:
            lines.append("made by: " + ", ".join(f"{k}={v}" for k, v in prov.items()))
        return "\n".join(lines)

    def to_text(self) -> str:
        """One ``name: format`` line per unit (diffable)."""
        return "".join(f"{u.name}: {k}\n" for u, k in zip(self.space.units, self.choice))

    def to_frame(self) -> Any:
        """pandas DataFrame with one row per unit: name, shape, numel, format, bits, bytes."""
        import pandas as pd

        rows = []
        for u, k, f in zip(self.space.units, self.choice, self.formats):
            rows.append(
                {
                    "unit": u.name,
                    "shape": u.shape,
                    "numel": u.numel,
                    "format": k,
                    "tie": u.tie,
                    "bits_per_weight": f.bits_per_weight(u.shape),
                    "bytes": f.nbytes(u.shape),
                }
            )
        return pd.DataFrame(
            rows, columns=["unit", "shape", "numel", "format", "tie", "bits_per_weight", "bytes"]
        )

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "bitalloc.Solution",
            "version": SOLUTION_VERSION,
            "status": self.status.value,
            "objective": _num(self.objective),
            "avg_bits": _num(self.avg_bits),
            "bytes": self.nbytes,
            "message": self.message,
            "meta": _jsonable(self.meta),
            "space": self.space.to_dict(),
            "assignment": {u.name: k for u, k in zip(self.space.units, self.choice)},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Solution:
        if not isinstance(d, Mapping) or d.get("type") != "bitalloc.Solution":
            raise ValueError('not a bitalloc plan: missing "type": "bitalloc.Solution"')
        if d.get("version") != SOLUTION_VERSION:
            raise ValueError(f"unsupported plan version {d.get('version')!r}")
        try:
            space = SearchSpace.from_dict(d["space"])
            assignment = d["assignment"]
            status = Status(d["status"])
            if status is Status.INFEASIBLE and not assignment:
                choice: tuple[str, ...] = ()  # an infeasible plan has no assignment
            elif set(assignment) != set(space.names):
                raise ValueError("plan assignment and space name different units")
            else:
                choice = tuple(str(assignment[n]) for n in space.names)
            obj = d.get("objective")
            return cls(
                space=space,
                choice=choice,
                status=status,
                objective=math.nan if obj is None else float(obj),
                message=str(d.get("message", "")),
                meta=d.get("meta", {}),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed plan: {type(e).__name__}: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Solution:
        """Read a plan written by :meth:`save`; malformed files raise ValueError."""
        return cls.from_dict(read_json(path, "plan"))


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x
