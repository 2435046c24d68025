"""Packed backend: replace planned ``nn.Linear`` layers by :class:`PackedLinear`, reversibly,
and save/load packed checkpoints (safetensors).

``apply`` swaps each planned layer for a :class:`~bitalloc.backends.packed_linear.PackedLinear`
holding only the packed tensors (codes, fp16 scales, zeros, sparse masks), so the model's weight
memory is the plan's predicted bytes exactly (:attr:`Solution.nbytes`). Channel-slice units of
one layer become row blocks of one ``PackedLinear``, each block in its own format.
``handle.restore()`` puts the original modules back. The codes come from the ``quantizer``
backend (``"rtn"`` or ``"gptq"``) run with ``keep_codes=True`` on the float model: its own
codes, fp16 scales, zero points and keep-masks are packed
(:meth:`~bitalloc.backends.packed_linear.PackedLinear.from_quantized`), then the float
weights are restored: the storage layout and byte count are the same either way.

Checkpoint (:func:`save_packed` / :func:`load_packed`): a safetensors file holding only the
packed unit tensors, named ``<layer FQN>.b<k>_<name>``, with the plan JSON in its metadata
(``bitalloc.plan``). Loading re-checks the plan against the model (unit names and shapes) and
every tensor's name, shape and dtype; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from ..search._io import atomic_write, parse_json
from ..search.choices import set_choice
from ..search.formats import QuantFormat
from ..search.solution import Solution
from ..search.space import SearchSpace, Unit
from . import BACKENDS
from .base import AppliedPlan, check_plan
from .rtn import MaskScore

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .packed_linear import Block, PackedLinear

FORMAT_TAG = "bitalloc.packed"
FORMAT_VERSION = "1"
QUANTIZERS = ("rtn", "gptq")


@BACKENDS.register("packed")
@dataclass(frozen=True, slots=True)
class PackedBackend:
    """Packed storage for ``nn.Linear`` units (dense, sparse and 16-bit float formats).

    The codes come from the ``quantizer`` backend run with ``keep_codes=True`` (its own
    codes, fp16 scales, zero points and keep-masks are packed as they are, never
    re-quantized), so a packed model computes exactly what that backend's fake-quant does.

    Args:
        mask_score: how sparse formats choose the pruned weights (``quantizer="rtn"`` only):
            ``"magnitude"`` or ``"wanda"`` (needs ``calib``); SparseGPT chooses its own masks.
        quantizer: ``"rtn"`` (the rtn backend: clip-searched grid with ``calib``, minmax
            without) or ``"gptq"`` (GPTQ / SparseGPT; needs ``calib``), or an instance of
            either backend (``PackedBackend(quantizer=GptqBackend(act_order=False))``), stored
            as its name and non-default options.
        quantizer_options: options of the quantizer backend (rtn: ``grid``,
            ``search_steps``, ``min_shrink``; gptq: ``percdamp``, ``block_size``,
            ``act_order``, ``max_batches``, ``sequential``, ``grid``); ``None`` for defaults.
    """

    name: ClassVar[str]
    mask_score: MaskScore | str = MaskScore.MAGNITUDE
    quantizer: Any = "rtn"
    quantizer_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.quantizer, str):
            self._compose(self.quantizer)
        set_choice(self, "mask_score", MaskScore)
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"`quantizer` must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.quantizer == "gptq" and self.mask_score != "magnitude":
            raise ValueError(
                "`mask_score` applies to quantizer='rtn' only (gptq prunes with SparseGPT)"
            )
        self.quantizer_backend()  # unknown or bad options raise here, before any work

    def _compose(self, inner: Any) -> None:
        """Store a quantizer backend instance as its name and non-default options (the form
        plans record), so ``PackedBackend(quantizer=GptqBackend(sequential=False))`` equals
        ``PackedBackend(quantizer="gptq", quantizer_options={"sequential": False})``."""
        import dataclasses

        name = getattr(type(inner), "name", None)
        if name not in QUANTIZERS or not dataclasses.is_dataclass(inner):
            raise TypeError(
                f"`quantizer` must be one of {QUANTIZERS} or an instance of their backends, "
                f"got {type(inner).__name__}"
            )
        if self.quantizer_options is not None:
            raise ValueError("pass `quantizer_options` with a quantizer name, not an instance")
        opts = {
            f.name: getattr(inner, f.name)
            for f in dataclasses.fields(inner)
            if f.init and f.name != "keep_codes" and getattr(inner, f.name) != f.default
        }
        if name == "rtn" and "mask_score" in opts:
            object.__setattr__(self, "mask_score", opts.pop("mask_score"))
        object.__setattr__(self, "quantizer", name)
        object.__setattr__(self, "quantizer_options", opts or None)

    def quantizer_backend(self) -> Any:
        """The backend that makes the codes (with ``keep_codes=True``)."""
        opts = dict(self.quantizer_options or {})
        for reserved in ("keep_codes", "mask_score"):
            if reserved in opts:
                hint = "packing needs the codes" if reserved == "keep_codes" else "a field here"
                raise ValueError(f"`quantizer_options` cannot set {reserved} ({hint})")
        if self.quantizer == "rtn":
            opts["mask_score"] = self.mask_score
        return BACKENDS.get(self.quantizer, keep_codes=True, **opts)

    def supports(self, unit: Unit, fmt: QuantFormat) -> bool:
        """2-D (``nn.Linear``) weights in any storable format; conv weights are refused."""
        return len(unit.shape) == 2 and not fmt.is_ggml and fmt.supports(unit.shape)

    def quantized(self, model: nn.Module, space: SearchSpace, calib: Any = None) -> Any:
        """The quantizer backend's ``W_hat`` (a packed layer dequantizes to exactly these)."""
        return self.quantizer_backend().quantized(model, space, calib)

    def apply(self, model: nn.Module, solution: Solution, *, calib: Any = None) -> AppliedPlan:
        """Quantize with the quantizer backend, pack its codes, swap in ``PackedLinear``s."""
        from .packed_linear import PackedLinear

        layers = plan_layers(model, solution)
        unit_of = {
            (u.fqn, (u.channels or (0, u.shape[0]))[0]): u.name for u in solution.space.units
        }
        handle = self.quantizer_backend().apply(model, solution, calib=calib)
        try:
            kept = handle.tensors
            built = {
                fqn: PackedLinear.from_quantized(
                    linear, blocks, [kept.get(unit_of[fqn, start]) for start, _, _ in blocks]
                )
                for fqn, (linear, blocks) in layers.items()
            }
        finally:
            handle.restore()
        return _swap(model, solution, built)


def plan_layers(model: nn.Module, solution: Solution) -> dict[str, tuple[nn.Linear, list[Block]]]:
    """Layer FQN -> (its ``nn.Linear``, row blocks ``(start, stop, key)``) of a plan; raises
    ``ValueError`` for non-Linear units or layers whose rows the plan does not cover."""
    from torch import nn

    modules = check_plan(model, solution)
    layers: dict[str, tuple[nn.Linear, list[Block]]] = {}
    for unit, key in zip(solution.space.units, solution.choice):
        mod = modules[unit.name]
        if not isinstance(mod, nn.Linear):
            raise ValueError(
                f"the packed backend stores nn.Linear layers only; {unit.fqn!r} is "
                f"{type(mod).__name__} (exclude it or use the rtn backend)"
            )
        start, stop = unit.channels or (0, mod.out_features)
        layers.setdefault(unit.fqn, (mod, []))[1].append((start, stop, key))
    for fqn, (mod, blocks) in layers.items():
        blocks.sort()
        rows = [0, *[b for _, b, _ in blocks]]
        if [a for a, _, _ in blocks] != rows[:-1] or rows[-1] != mod.out_features:
            spans = [f"[{a}:{b}]" for a, b, _ in blocks]
            raise ValueError(
                f"the plan's units of {fqn!r} cover rows {' '.join(spans)}, not all "
                f"{mod.out_features} output rows; the packed backend stores whole layers"
            )
    return layers


def _sparse(key: str) -> bool:
    return QuantFormat.parse(key).is_sparse


def _swap(model: nn.Module, solution: Solution, built: dict[str, PackedLinear]) -> AppliedPlan:
    originals: dict[str, nn.Module] = {}
    try:
        for fqn, new in built.items():
            originals[fqn] = model.get_submodule(fqn)
            _set(model, fqn, new)
    except BaseException:
        _restore(model, cast(Any, originals))
        raise
    return AppliedPlan(model, solution, cast(Any, originals), _restore)


def _set(model: nn.Module, fqn: str, module: nn.Module) -> None:
    parent, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _restore(model: nn.Module, originals: dict[str, Any]) -> None:
    for fqn, mod in originals.items():
        _set(model, fqn, mod)


# ---------------------------------------------------------------------- checkpoints
def save_packed(
    model: nn.Module,
    solution: Solution,
    path: str | os.PathLike[str],
    *,
    mask_score: str = "magnitude",
    calib: Any = None,
    quantizer: str = "rtn",
    **quantizer_options: Any,
) -> Path:
    """Write the plan's packed unit tensors and the plan JSON to a safetensors file, atomically.

    ``model`` is the float model (packed here by ``quantizer``, ``"rtn"`` or ``"gptq"``, see
    :class:`PackedBackend`; left untouched) or one the packed backend was applied to with this
    plan (its tensors are written as they are). ``quantizer_options`` go to the quantizer
    backend (rtn: ``grid``, ...; gptq: ``percdamp``, ``act_order``, ...);
    ``quantizer="gptq"`` needs ``calib``, and rtn searches its grid when ``calib`` is given.
    """
    from safetensors.torch import save

    from .packed_linear import PackedLinear

    backend = PackedBackend(mask_score, quantizer, quantizer_options or None)
    layers = _packed_layers(model, solution)
    if layers is None:
        handle = backend.apply(model, solution, calib=calib)
        try:
            layers = cast(dict[str, PackedLinear], _packed_layers(model, solution))
        finally:
            handle.restore()
    tensors = {
        f"{fqn}.{n}": t.detach().to("cpu").contiguous()
        for fqn, layer in layers.items()
        for n, t in layer.packed_tensors().items()
    }
    meta = {"format": FORMAT_TAG, "version": FORMAT_VERSION}
    meta["bitalloc.plan"] = json.dumps(solution.to_dict())
    data = save(tensors, metadata=meta)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _packed_layers(model: nn.Module, solution: Solution) -> dict[str, PackedLinear] | None:
    """The model's PackedLinear layers when they hold exactly this plan, else ``None``."""
    from .packed_linear import PackedLinear

    want: dict[str, list[tuple[int, int, str]]] = {}
    for u, key in zip(solution.space.units, solution.choice):
        start, stop = u.channels or (0, u.shape[0])
        want.setdefault(u.fqn, []).append((start, stop, QuantFormat.parse(key).key))
    mods = dict(model.named_modules())
    found = {f: mods.get(f) for f in want}
    if all(
        isinstance(m, PackedLinear) and m.blocks == tuple(sorted(want[f]))
        for f, m in found.items()
    ):
        return cast(dict[str, PackedLinear], found)
    if any(isinstance(m, PackedLinear) for m in found.values()):
        raise ValueError("the model holds packed layers of a different plan; restore it first")
    return None


def read_packed(path: str | os.PathLike[str]) -> tuple[Solution, dict[str, torch.Tensor]]:
    """The plan and tensors of a packed checkpoint (``ValueError`` if it is not one)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as e:  # noqa: BLE001 - OSError, or SafetensorError for a corrupt file
        raise ValueError(f"cannot read packed checkpoint {os.fspath(path)!r}: {e}") from None
    if meta.get("format") != FORMAT_TAG or "bitalloc.plan" not in meta:
        raise ValueError(f"{os.fspath(path)!r} is not a bitalloc packed checkpoint")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported packed checkpoint version {meta.get('version')!r}")
    doc = parse_json(meta["bitalloc.plan"], f"the plan in packed checkpoint {os.fspath(path)!r}")
    plan = Solution.from_dict(doc)
    return plan, tensors


def load_packed(model: nn.Module, path: str | os.PathLike[str]) -> AppliedPlan:
    """Swap the checkpoint's packed layers into ``model`` (reversible: ``handle.restore()``).

    Raises ``ValueError`` when the checkpoint's plan does not match the model (unit names and
    weight shapes) or a tensor is missing, unexpected, or of the wrong shape/dtype.
    """
    from .packed_linear import PackedLinear

    plan, tensors = read_packed(path)
    try:
        layers = plan_layers(model, plan)
    except ValueError as e:
        raise ValueError(f"checkpoint {os.fspath(path)!r} does not match the model: {e}") from None
    built, used = {}, set()
    for fqn, (linear, blocks) in layers.items():
        prefix = fqn + "."
        mine = {k[len(prefix) :]: t for k, t in tensors.items() if k.startswith(prefix)}
        device = linear.weight.device
        mine = {k: t.to(device) for k, t in mine.items() if "." not in k}
        used.update(prefix + k for k in mine)
        try:
            built[fqn] = PackedLinear(
                linear.in_features, linear.out_features, blocks, mine, linear.bias
            )
        except ValueError as e:
            raise ValueError(f"checkpoint {os.fspath(path)!r}, layer {fqn!r}: {e}") from None
    extra = sorted(set(tensors) - used)
    if extra:
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} has tensors of no planned unit: {extra[:5]}"
        )
    return _swap(model, plan, built)


def checkpoint_nbytes(path: str | os.PathLike[str]) -> int:
    """Measured bytes of a packed checkpoint's weight tensors (sum of tensor ``nbytes``)."""
    _, tensors = read_packed(path)
    return sum(t.numel() * t.element_size() for t in tensors.values())
