"""The Backend protocol: materialise a :class:`Solution` on a model, reversibly.

``apply(model, solution) -> AppliedPlan``: the handle keeps what it needs to put the model back
exactly (``handle.restore()``, or use it as a context manager).
``quantized(model, space, calib) -> QuantizedWeights``: ``W_hat`` of every (unit, format) as
``apply`` would build it, for the estimators and the EvoPress variant cache (one source of
``W_hat``, so a table prices what the backend writes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ..search.formats import QuantFormat
from ..search.solution import Solution
from ..search.space import SearchSpace, Unit

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .quantizer import Quantized, QuantizedWeights


@runtime_checkable
class Backend(Protocol):
    """Turns a plan into a quantized model."""

    name: ClassVar[str]

    def supports(self, unit: Unit, fmt: QuantFormat) -> bool:
        """Whether this backend can build ``unit`` in ``fmt``."""
        ...

    def apply(self, model: nn.Module, solution: Solution, *, calib: Any = None) -> AppliedPlan:
        """Quantize ``model`` in place according to ``solution``."""
        ...

    def quantized(
        self, model: nn.Module, space: SearchSpace, calib: Any = None
    ) -> QuantizedWeights:
        """``W_hat`` of every (unit, format) of ``space`` from ``model``'s current weights."""
        ...


class AppliedPlan:
    """Handle of an applied plan; :meth:`restore` puts the original weights back bit-exactly.

    ``tensors`` maps unit names to their :class:`~bitalloc.backends.quantizer.Quantized`
    codes/scales/zeros/masks when the backend ran with ``keep_codes=True`` (else empty).
    """

    tensors: dict[str, Quantized]

    def __init__(
        self,
        model: nn.Module,
        solution: Solution,
        originals: dict[str, torch.Tensor],
        restore_fn: Callable[[nn.Module, dict[str, torch.Tensor]], None],
        tensors: dict[str, Quantized] | None = None,
    ) -> None:
        self.model = model
        self.solution = solution
        self._originals = originals
        self._restore_fn = restore_fn
        self.restored = False
        self.tensors = {} if tensors is None else tensors

    def restore(self) -> nn.Module:
        """Undo the apply (idempotent) and return the model."""
        if not self.restored:
            self._restore_fn(self.model, self._originals)
            self._originals = {}
            self.restored = True
        return self.model

    def __enter__(self) -> AppliedPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def check_plan(model: nn.Module, solution: Solution) -> dict[str, nn.Module]:
    """Verify that every unit of ``solution`` exists in ``model`` with the same weight shape.

    Returns unit name -> module (channel-slice units map to their layer); raises
    ``ValueError`` listing every mismatch otherwise.
    """
    if not isinstance(solution, Solution):
        raise TypeError(f"`solution` must be a Solution, got {type(solution).__name__}")
    if not solution.success:
        raise ValueError(
            f"cannot apply a plan with status {solution.status.value}: {solution.message}"
        )
    modules = dict(model.named_modules())
    problems, found = [], {}
    for u in solution.space.units:
        w = getattr(modules.get(u.fqn), "weight", None)
        if w is None:
            problems.append(f"{u.fqn}: not in the model")
            continue
        shape = tuple(w.shape)
        if u.channels is not None:
            start, stop = u.channels
            shape = (min(stop, shape[0]) - start, *shape[1:]) if start < shape[0] else (0,)
        if shape != u.shape:
            problems.append(f"{u.name}: plan shape {u.shape} != model shape {shape}")
        else:
            found[u.name] = modules[u.fqn]
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError("plan does not match the model: " + "; ".join(problems[:5]) + more)
    from ..nn.checks import check_finite_weights

    units = solution.space.units
    check_finite_weights(model, [u.fqn for u in units], "a quantized copy would be meaningless")
    return found


def refuse_unsupported(backend: Backend, solution: Solution, builds: str) -> None:
    """ValueError naming the first units of ``solution`` that ``backend`` cannot build (its
    ``supports``); ``builds`` says what it does build."""
    bad = [
        f"{u.name}={k}"
        for u, k, f in zip(solution.space.units, solution.choice, solution.formats)
        if not backend.supports(u, f)
    ]
    if bad:
        raise ValueError(f"the {backend.name} backend builds {builds}; not: {', '.join(bad[:5])}")


class UnitViews:
    """The weights of a space's units (views into the model), for a backend's ``W_hat``
    source: :meth:`take` checks the format is allowed and gives the float32 weight."""

    def __init__(self, model: nn.Module, space: SearchSpace) -> None:
        from ..nn.units import unit_modules, unit_weight

        self.space = space
        modules = unit_modules(model, space.units)
        self._views = [unit_weight(modules[u.name], u) for u in space.units]

    def take(self, index: int, key: str) -> tuple[Unit, QuantFormat, torch.Tensor]:
        """Unit ``index``, the format ``key`` (ValueError when the unit may not take it) and
        the unit's weight as float32 on the CPU."""
        unit = self.space.units[index]
        if key not in unit.allowed:
            raise ValueError(f"unit {unit.name!r} cannot take format {key!r}; {unit.allowed}")
        fmt = self.space.formats[self.space.keys.index(key)]
        return unit, fmt, self._views[index].detach().float().cpu()


def restore_weights(model: nn.Module, originals: dict[str, torch.Tensor]) -> None:
    """Copy the saved weights (layer FQN -> tensor) back into ``model``."""
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w in originals.items():
            modules[name].weight.copy_(w)


def write_weights(
    model: nn.Module,
    solution: Solution,
    modules: dict[str, nn.Module],
    source: QuantizedWeights,
    *,
    keep_codes: bool = False,
) -> AppliedPlan:
    """Copy ``source``'s ``W_hat`` of each unit's chosen format into ``model`` (``modules``
    from :func:`check_plan`); the handle restores the originals, also when this raises."""
    import torch

    originals: dict[str, torch.Tensor] = {}  # by layer FQN: channel slices share one copy
    tensors: dict[str, Quantized] = {}
    try:
        with torch.no_grad():
            for i, (unit, key) in enumerate(zip(solution.space.units, solution.choice)):
                weight = modules[unit.name].weight
                if unit.fqn not in originals:
                    originals[unit.fqn] = weight.detach().to("cpu", copy=True)
                res = source.get(i, key)
                w = weight if unit.channels is None else weight[slice(*unit.channels)]
                w.copy_(res.weight)
                if keep_codes:
                    tensors[unit.name] = res
    except BaseException:
        restore_weights(model, originals)
        raise
    return AppliedPlan(model, solution, originals, restore_weights, tensors=tensors)
