"""Sensitivity tables: predicted loss increase for every (unit, format) pair.

Additivity assumption: the loss increase of a whole plan is predicted as the SUM of its
units' entries. Solvers optimise that sum; ``bitalloc validate`` (later) measures how well it
ranks real plans.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write
from .space import SearchSpace

TABLE_VERSION = 1


@dataclass(frozen=True, slots=True)
class SensitivityTable:
    """``values[i, j]``: predicted loss increase of unit ``i`` stored in format ``j``.

    ``inf`` where the format is not allowed for the unit. ``meta`` records provenance
    (estimator options, model and calibration fingerprints, timings).
    """

    space: SearchSpace
    values: np.ndarray
    estimator: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = np.array(self.values, dtype=np.float64, copy=True)
        shape = (len(self.space), len(self.space.formats))
        if v.shape != shape:
            raise ValueError(f"`values` must have shape {shape} (units x formats), got {v.shape}")
        mask = self.space.mask
        if np.isnan(v).any():
            bad = [self.space.units[i].name for i in np.argwhere(np.isnan(v))[:3, 0]]
            raise ValueError(f"sensitivity table has NaN entries (units {bad})")
        if not np.isfinite(v[mask]).all():
            raise ValueError("sensitivity table has inf entries for allowed (unit, format) pairs")
        v[~mask] = np.inf
        v.setflags(write=False)
        object.__setattr__(self, "values", v)
        object.__setattr__(self, "meta", dict(self.meta))

    def __getitem__(self, key: tuple[str, str]) -> float:
        name, fmt = key
        return float(self.values[self.space.index(name), self.space.keys.index(fmt)])

    def to_frame(self) -> Any:
        """A pandas DataFrame, units as rows and format keys as columns."""
        import pandas as pd

        return pd.DataFrame(
            self.values, index=list(self.space.names), columns=list(self.space.keys)
        )

    # ------------------------------------------------------------------ persistence
    def header(self) -> dict[str, Any]:
        return {
            "version": TABLE_VERSION,
            "estimator": self.estimator,
            "meta": _jsonable(self.meta),
            "space": self.space.to_dict(),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``.npz`` with the array and a JSON header; atomic."""
        header = np.frombuffer(json.dumps(self.header()).encode(), dtype=np.uint8)

        def write(tmp: Path) -> None:
            buf = io.BytesIO()
            np.savez(buf, values=self.values, header=header)
            tmp.write_bytes(buf.getvalue())

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SensitivityTable:
        """Read a table written by :meth:`save` (no pickle). Anything else (empty, truncated,
        a plain ``.npy``, a foreign header) raises ValueError naming the file."""
        import zipfile

        name = repr(os.fspath(path))
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a plain .npy array, not a table archive")
            with data:
                missing = {"values", "header"} - set(data.files)
                if missing:
                    raise ValueError(f"no {' or '.join(sorted(missing))} entry")
                values = data["values"]
                header = json.loads(bytes(data["header"]).decode())
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, TypeError) as e:
            raise ValueError(f"cannot read sensitivity table {name}: {e}") from None
        if not isinstance(header, dict):
            raise ValueError(f"sensitivity table {name}: the header is not a JSON object")
        if header.get("version") != TABLE_VERSION:
            raise ValueError(
                f"sensitivity table {name}: unsupported version {header.get('version')!r}"
            )
        try:
            return cls(
                space=SearchSpace.from_dict(header["space"]),
                values=values,
                estimator=str(header["estimator"]),
                meta=header.get("meta") or {},
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(
                f"sensitivity table {name} is malformed: {type(e).__name__}: {e}"
            ) from None


def _jsonable(obj: Any) -> Any:
    """Make provenance JSON-safe (numpy scalars, tuples, paths)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
