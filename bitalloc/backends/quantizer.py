"""The one quantizer: what a format becomes for one unit, and the per-unit source of ``W_hat``.

:func:`quantize_unit` turns a float weight and a :class:`QuantFormat` into a
:class:`Quantized` record (the dequantized weight plus the codes, fp16 scales, integer zero
points and keep-mask a packed checkpoint stores). Every path that builds ``W_hat`` goes
through it or through GPTQ's loop on the same grid: the rtn backend's ``apply``, the
estimators' ``dW`` (:meth:`Backend.quantized`), the EvoPress variant cache, packed checkpoints.
The grid is minmax, or the activation-weighted clip search of
:func:`bitalloc.kernels.grid.fit_grid` when an importance vector (``E[x^2]`` of the layer's
input) is given.

:class:`QuantizedWeights` is what a backend hands out for a whole search space:
``source.get(i, key)`` is unit ``i`` in format ``key``, exactly as ``apply`` would write it.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ..search.formats import QuantFormat

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..search.solution import Solution
    from ..search.space import SearchSpace, Unit


@dataclass(frozen=True)
class Quantized:
    """One unit's weight in one format.

    ``weight`` is float32 of the unit's shape (pruned entries exactly 0); ``codes`` int16
    ``[N, G, group]`` (signed when symmetric), ``scale`` fp16 ``[N, G]``, ``zero`` int16
    ``[N, G]`` (``None`` when symmetric; all three ``None`` for 16-bit floats); ``keep`` the
    boolean keep-mask of the unit's shape (``None`` when dense).
    """

    weight: torch.Tensor
    codes: torch.Tensor | None
    scale: torch.Tensor | None
    zero: torch.Tensor | None
    keep: torch.Tensor | None


@runtime_checkable
class QuantizedWeights(Protocol):
    """``W_hat`` of every (unit, format) of a search space, as a backend builds it."""

    def get(self, index: int, key: str) -> Quantized:
        """Unit ``index`` of the space in format ``key``."""
        ...


def quantize_unit(
    w: torch.Tensor,
    fmt: QuantFormat,
    *,
    importance: torch.Tensor | None = None,
    act_norms: torch.Tensor | None = None,
    steps: int | None = None,
    min_shrink: float | None = None,
) -> Quantized:
    """Quantize one unit's weight ``w`` ``[N, K, ...]`` in ``fmt``.

    Sparse formats prune first (magnitude, or Wanda scores with ``act_norms``) and quantize
    the kept weights, whose grid is fitted with the pruned entries at 0. ``importance``
    (``[K']``) selects the clip-searched grid; ``steps``/``min_shrink`` tune it.
    """
    import torch

    from ..kernels import grid
    from ..kernels.sparsity import prune_mask

    if fmt.is_ggml:
        raise ValueError(
            f"{fmt.key} is a ggml block type: build it with the 'ggml' backend "
            "(bitalloc.toolkits.ggml, after `make llama-cpp`), not the integer-grid quantizer"
        )
    wf = w.detach().float()
    keep = None
    if fmt.is_sparse:
        keep = prune_mask(wf, fmt.sparsity, fmt.n_m, act_norms=act_norms)
        wf = torch.where(keep, wf, torch.zeros((), device=wf.device))
    if fmt.is_float:
        half = torch.bfloat16 if fmt.float_kind == "bf16" else torch.float16
        return Quantized(wf.to(half).float(), None, None, None, keep)
    opts = {"steps": steps, "min_shrink": min_shrink}
    q, scale, zero = grid.quantize(
        wf,
        fmt.bits,
        fmt.group_size,
        fmt.symmetric,
        importance,
        **{k: v for k, v in opts.items() if v is not None},  # type: ignore[arg-type]
    )
    weight = grid.decode(q, scale, zero).reshape(wf.shape)
    if keep is not None:
        weight = torch.where(keep, weight, torch.zeros((), device=weight.device))
    return Quantized(weight, q, scale, zero, keep)


class CachedWeights:
    """A :class:`QuantizedWeights` that keeps the ``W_hat`` of every result it hands out (in
    memory; codes, scales and masks are dropped), so the table and the EvoPress variant cache
    of one search share one build of each variant. Pack from the backend's ``apply``."""

    def __init__(self, source: QuantizedWeights) -> None:
        self.source = source
        self._memo: dict[tuple[int, str], Quantized] = {}

    def get(self, index: int, key: str) -> Quantized:
        hit = self._memo.get((index, key))
        if hit is None:
            weight = self.source.get(index, key).weight
            hit = self._memo[(index, key)] = Quantized(weight, None, None, None, None)
        return hit

    def __len__(self) -> int:
        return len(self._memo)


class Prepared:
    """A backend bound to one (model, space, calib) whose ``W_hat`` are built once and shared.

    ``quantized`` returns the same :class:`CachedWeights` for that model, space and
    calibration (by identity), so the estimator's table and the EvoPress variant cache of one
    search price and swap the same tensors; anything else is delegated to ``backend``. The
    shared variants are computed from the weights the model holds when first asked.
    """

    name: ClassVar[str] = "prepared"

    def __init__(self, backend: Any, model: nn.Module, space: SearchSpace, calib: Any) -> None:
        self.backend, self.model, self.space, self.calib = backend, model, space, calib
        self._source: CachedWeights | None = None

    @property
    def source(self) -> CachedWeights:
        if self._source is None:
            self._source = CachedWeights(
                self.backend.quantized(self.model, self.space, self.calib)
            )
        return self._source

    def quantized(self, model: nn.Module, space: SearchSpace, calib: Any = None) -> Any:
        if model is self.model and space == self.space and calib is self.calib:
            return self.source
        return self.backend.quantized(model, space, calib)

    def apply(self, model: nn.Module, solution: Solution, *, calib: Any = None) -> Any:
        return self.backend.apply(model, solution, calib=calib)

    def supports(self, unit: Unit, fmt: QuantFormat) -> bool:
        return bool(self.backend.supports(unit, fmt))


def base_backend(backend: Any) -> Any:
    """The registered backend behind ``backend`` (unwraps :class:`Prepared`)."""
    return backend.backend if isinstance(backend, Prepared) else backend


def describe(backend: Any) -> dict[str, Any]:
    """``{"name": ..., "options": {...}}`` of a backend (JSON-safe; what a plan records)."""
    be = base_backend(backend)
    opts = dataclasses.asdict(be) if dataclasses.is_dataclass(be) else {}
    opts.pop("keep_codes", None)
    return {"name": type(be).name, "options": {k: _plain(v) for k, v in opts.items()}}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
