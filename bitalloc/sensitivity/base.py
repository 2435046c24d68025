"""The Estimator protocol and helpers shared by estimators.

``Estimator.estimate(model, space, calib, *, backend) -> SensitivityTable``: ``values[i, j]``
predicts the loss increase when unit ``i`` alone is stored in format ``j``; solvers assume the
increases add up over units. Every ``dW = W_hat - W`` an estimator scores is the ``W_hat`` that
``backend`` builds (:meth:`Backend.quantized`; default the rtn backend, clip-searched grid when
``calib`` is given), so the table prices what ``apply`` will write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..search.calibration import Calibration
    from ..search.formats import QuantFormat
    from ..search.space import SearchSpace, Unit
    from ..search.table import SensitivityTable

Progress = Callable[[int, int, str], None]
"""``callback(done, total, description)`` for progress reporting."""


@runtime_checkable
class Estimator(Protocol):
    """Scores every allowed (unit, format) pair of a search space."""

    name: ClassVar[str]
    needs_calibration: ClassVar[bool]

    def estimate(
        self,
        model: nn.Module,
        space: SearchSpace,
        calib: Calibration | None,
        *,
        backend: Any = None,
        callback: Progress | None = None,
    ) -> SensitivityTable: ...


class EstimatorBase:
    """The template the built-in estimators share: :meth:`estimate` opens a :class:`Scoring`
    (calibration check, unit modules, the backend's ``W_hat``) and hands it to
    :meth:`score_table`, which holds only the estimator's formula.

    Class flags: ``needs_calibration``; ``linear_only`` names the estimator to suggest when a
    unit is not an ``nn.Linear`` (``None``: any module with a weight).
    """

    __slots__ = ()
    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    linear_only: ClassVar[str | None] = None

    def estimate(
        self,
        model: nn.Module,
        space: SearchSpace,
        calib: Calibration | None = None,
        *,
        backend: Any = None,
        callback: Progress | None = None,
    ) -> SensitivityTable:
        """Score every allowed (unit, format) pair of ``space`` (:class:`Estimator`)."""
        run = Scoring(self, model, space, calib, backend, linear_only=self.linear_only)
        return self.score_table(run, model, callback)

    def score_table(
        self, run: Scoring, model: nn.Module, callback: Progress | None
    ) -> SensitivityTable:
        """The table of ``run.space`` (``run.per_format`` + ``run.table``)."""
        raise NotImplementedError


class Deltas:
    """``dW = W_hat - W`` (float32, the unit's shape) of every (unit, format) of ``space``.

    ``W_hat`` comes from ``backend.quantized(model, space, calib)`` (a backend name or
    instance; ``None`` = the rtn backend with its defaults), built on the first call from the
    model's weights as they are then (so an estimator's own input checks run first).
    ``deltas(i, j)`` is unit ``i`` in ``space.formats[j]``. A
    :class:`~bitalloc.backends.quantizer.Prepared` backend shares its built variants.
    """

    def __init__(
        self, model: nn.Module, space: SearchSpace, calib: Calibration | None, backend: Any
    ) -> None:
        from ..backends import BACKENDS
        from ..nn.units import unit_modules, unit_weight

        self.backend = BACKENDS.resolve("rtn" if backend is None else backend)
        self.model, self.space, self.calib = model, space, calib
        self._source: Any = None
        self.modules = unit_modules(model, space.units)
        self._views = [unit_weight(self.modules[u.name], u) for u in space.units]

    @property
    def source(self) -> Any:
        """The backend's :class:`~bitalloc.backends.quantizer.QuantizedWeights`."""
        if self._source is None:
            self._source = self.backend.quantized(self.model, self.space, self.calib)
        return self._source

    def weight(self, i: int, j: int) -> torch.Tensor:
        """``W_hat`` of unit ``i`` in format ``j`` (float32)."""
        return self.source.get(i, self.space.formats[j].key).weight

    def __call__(self, i: int, j: int) -> torch.Tensor:
        return self.weight(i, j) - self._views[i].detach().float()

    def view(self, i: int) -> torch.Tensor:
        """Unit ``i``'s weight in the model (a view sharing its storage)."""
        return self._views[i]


@dataclasses.dataclass(frozen=True, slots=True)
class Cell:
    """One allowed (unit, format) pair, as :meth:`Scoring.per_format` hands it to a score."""

    i: int
    j: int
    unit: Unit
    fmt: QuantFormat
    deltas: Deltas

    @property
    def module(self) -> nn.Module:
        """The unit's module (shared by the channel slices of one layer)."""
        return self.deltas.modules[self.unit.name]

    @property
    def weight(self) -> torch.Tensor:
        """The unit's weight in the model (a view; its rows for a channel unit)."""
        return self.deltas.view(self.i)

    @property
    def w_hat(self) -> torch.Tensor:
        """``W_hat``: what the backend writes for this unit in this format (float32)."""
        return self.deltas.weight(self.i, self.j)

    @property
    def delta(self) -> torch.Tensor:
        """``dW = W_hat - W`` (float32)."""
        return self.deltas(self.i, self.j)


class Scoring:
    """The prologue, per-format loop and epilogue every estimator shares.

    ``Scoring(estimator, model, space, calib, backend)`` checks the calibration (when the
    estimator ``needs_calibration``) and that every unit is a module with a weight of the
    space's shape (``linear_only`` names the estimator to suggest when a unit is not an
    ``nn.Linear``), and prepares the backend's :class:`Deltas`. An estimator then computes its
    statistics, fills the table with :meth:`per_format` and returns :meth:`table`.
    """

    def __init__(
        self,
        estimator: Any,
        model: nn.Module,
        space: SearchSpace,
        calib: Calibration | None,
        backend: Any,
        *,
        linear_only: str | None = None,
    ) -> None:
        self.estimator, self.space = estimator, space
        if estimator.needs_calibration:
            calib = require_calibration(calib, estimator.name)
        self.calib = calib
        self.deltas = Deltas(model, space, calib, backend)
        self.modules = self.deltas.modules
        if linear_only is not None:
            require_linear(self.modules, estimator.name, linear_only)

    def per_format(
        self,
        score: Callable[[Cell], float],
        *,
        callback: Progress | None = None,
        description: str | None = None,
    ) -> np.ndarray:
        """``values[i, j] = score(cell)`` for every allowed (unit ``i``, format ``j``), ``inf``
        where the space masks the pair; ``callback(i + 1, n_units, description)`` after each
        unit when both are given."""
        space = self.space
        values = np.full((len(space), len(space.formats)), np.inf)
        mask = space.mask
        for i, u in enumerate(space.units):
            for j, fmt in enumerate(space.formats):
                if mask[i, j]:
                    values[i, j] = score(Cell(i, j, u, fmt, self.deltas))
            if callback is not None and description is not None:
                callback(i + 1, len(space), description)
        return values

    def table(self, values: np.ndarray, **meta: Any) -> SensitivityTable:
        """The :class:`SensitivityTable` of ``values``, its meta led by the estimator's options
        and the backend that built ``W_hat``."""
        from ..search.table import SensitivityTable

        head = {"options": options(self.estimator), "backend": backend_meta(self.deltas)}
        return SensitivityTable(
            space=self.space, values=values, estimator=self.estimator.name, meta=head | meta
        )


def monotone(values: np.ndarray, space: SearchSpace) -> np.ndarray:
    """Force each unit's costs non-increasing as its allowed formats get wider.

    Formats are ordered by ``bits_per_weight(unit.shape)``; a cost becomes the minimum of
    itself and the costs of every strictly narrower allowed format (ModelOpt AutoQuantize's
    ``score = min(score, prev_score)``), so a wider format never costs more than a narrower one
    (tiny costs of wide formats sit at the noise level and may exceed a narrower one's by
    chance). Formats of equal width are not ordered against each other. Masked entries are
    ``inf``.
    """
    out = values.copy()
    mask = space.mask
    out[~mask] = np.inf
    for i, u in enumerate(space.units):
        cols = np.flatnonzero(mask[i])
        bits = np.array([space.formats[j].bits_per_weight(u.shape) for j in cols])
        for j, b in zip(cols, bits):
            narrower = cols[bits < b]
            if narrower.size:
                out[i, j] = min(out[i, j], values[i, narrower].min())
    return out


def backend_meta(deltas: Deltas) -> dict[str, Any]:
    """``{"name": ..., "options": ...}`` of the backend that built a table's ``W_hat``."""
    from ..backends.quantizer import describe

    return describe(deltas.backend)


def options(estimator: Any) -> dict[str, Any]:
    """The estimator's options (its dataclass fields)."""
    return dataclasses.asdict(estimator) if dataclasses.is_dataclass(estimator) else {}


def require_calibration(calib: Calibration | None, estimator: str) -> Calibration:
    """``calib``, or a ValueError naming the estimator that needs it."""
    if calib is None:
        raise ValueError(f"`calib` is required for the {estimator} estimator")
    return calib


def require_linear(modules: dict[str, nn.Module], estimator: str, alternative: str) -> None:
    """Refuse non-``nn.Linear`` units for estimators that read ``x @ W^T`` outputs."""
    from torch import nn

    for name, mod in modules.items():
        if not isinstance(mod, nn.Linear):
            raise ValueError(
                f"{estimator} supports nn.Linear units only; {name!r} is "
                f"{type(mod).__name__} (use {alternative} or exclude it)"
            )
