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

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..search.calibration import Calibration
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


def unit_modules(model: nn.Module, space: SearchSpace) -> dict[str, nn.Module]:
    """Map unit names to their modules (``unit.fqn``), checking the shapes match the space.

    Several channel-slice units of one layer map to the same module; slice its weight with
    :func:`unit_weight`.
    """
    modules = dict(model.named_modules())
    out = {}
    for u in space.units:
        mod = modules.get(u.fqn)
        weight = getattr(mod, "weight", None)
        if mod is None or weight is None:
            raise ValueError(f"unit {u.name!r} of the search space is not a module with a weight")
        if tuple(unit_weight(mod, u).shape) != u.shape:
            raise ValueError(
                f"unit {u.name!r}: model weight shape {tuple(weight.shape)} != space "
                f"shape {u.shape}"
            )
        out[u.name] = mod
    return out


def unit_weight(module: nn.Module, unit: Unit) -> torch.Tensor:
    """The unit's weight: the module's weight, or its rows ``unit.channels`` (a view)."""
    w = module.weight
    if unit.channels is None:
        return w
    start, stop = unit.channels
    return w[start:stop]


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

        self.backend = BACKENDS.resolve("rtn" if backend is None else backend)
        self.model, self.space, self.calib = model, space, calib
        self._source: Any = None
        modules = unit_modules(model, space)
        self._views = [unit_weight(modules[u.name], u) for u in space.units]

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
