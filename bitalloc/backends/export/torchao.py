"""torchao ``FqnToConfig``: one ``IntxWeightOnlyConfig`` per format, keyed by ``re:`` patterns.

Each integer format becomes ``IntxWeightOnlyConfig(weight_dtype=torch.intB,
granularity=PerGroup(g) | PerAxis(0), mapping_type=SYMMETRIC | ASYMMETRIC)`` (pytorch/ao
torchao/quantization/quant_api.py; it runs on CPU), float units map to ``None`` (left alone),
unlisted modules are untouched. Keys are ``re:`` regexes (``re.fullmatch`` on the module FQN)
matching exactly the planned modules. The file is the ``quantization_config`` that transformers'
``TorchAoConfig.to_dict`` writes: ``{"quant_method": "torchao", "quant_type": {"default":
config_to_dict(FqnToConfig(...))}}``, produced by the installed torchao so the class versions
match (exports.md section 5). Load with ``TorchAoConfig.from_dict`` or
``torchao.core.config.config_from_dict(d["quant_type"]["default"])`` and ``quantize_``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

from ...search.formats import QuantFormat
from ...search.solution import Solution
from . import EXPORTERS
from .base import ExportViolations, LayerBytes, code_source, name_patterns, tensor_bytes
from .rules import RuleExporter, Rules


def intx_config(fmt: QuantFormat) -> Any:
    """The torchao ``IntxWeightOnlyConfig`` of an integer format (None for floats)."""
    if fmt.is_float:
        return None
    import torch
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{fmt.bits}"),
        granularity=PerAxis(0) if fmt.group_size is None else PerGroup(fmt.group_size),
        mapping_type=MappingType.SYMMETRIC if fmt.symmetric else MappingType.ASYMMETRIC,
    )


@EXPORTERS.register("torchao")
@dataclass(frozen=True, slots=True)
class TorchAoExporter(RuleExporter):
    """Writes a torchao ``FqnToConfig`` as transformers' ``TorchAoConfig`` dict."""

    name: ClassVar[str]
    suffix: ClassVar[str] = ".json"

    def rules(self) -> Rules:
        return Rules("torchao IntxWeightOnlyConfig", bits=(2, 3, 4, 5, 6, 7, 8))

    def config(self, solution: Solution) -> Any:
        """The ``torchao.quantization.FqnToConfig`` object of ``solution``."""
        bad = self.check(solution)
        if bad:
            raise ExportViolations(type(self).name, bad)
        from torchao.quantization import FqnToConfig

        by_key: dict[str, list[str]] = {}
        for u, key in zip(solution.space.units, solution.choice):
            by_key.setdefault(key, []).append(u.fqn)
        table: OrderedDict[str, Any] = OrderedDict()
        for key, names in sorted(by_key.items()):
            cfg = intx_config(QuantFormat.parse(key))
            for pattern in name_patterns(names, end=""):
                table["re:" + pattern] = cfg
        return FqnToConfig(table)

    def render(self, solution: Solution) -> dict[str, Any]:
        from torchao.core.config import config_to_dict

        return {
            "quant_method": "torchao",
            "quant_type": {"default": config_to_dict(self.config(solution))},
        }


def quantize_model(
    model: Any, solution: Solution, *, codes: Any = None, calib: Any = None
) -> tuple[Any, list[LayerBytes]]:
    """A copy of ``model`` quantized by torchao's own ``quantize_(model, FqnToConfig(...))``.

    Args:
        model: the float model (left unchanged).
        solution: the plan; it must pass the torchao exporter's rules.
        codes: ``None`` keeps torchao's own min-max grid; ``"rtn"``/``"gptq"`` (or an instance
            of either backend) puts bitalloc's codes, scales and zero points into torchao's
            tensors, so torchao's forward computes exactly bitalloc's ``W_hat`` (float units
            take their 16-bit value).
        calib: calibration batches for ``codes``.

    Returns the quantized copy and per layer its planned and stored bytes.
    """
    import copy

    from torchao.quantization import quantize_

    config = TorchAoExporter().config(solution)  # ExportViolations before any work
    backend = None if codes is None else code_source(codes, "codes")
    if backend is not None and any(u.channels is not None for u in solution.space.units):
        raise ValueError("torchao takes one format per layer: channel-slice units are refused")
    out = copy.deepcopy(model)
    quantize_(out, config, filter_fn=None)
    if backend is not None:
        _put_codes(out, model, solution, backend, calib)
    layers = []
    for u, fmt in zip(solution.space.units, solution.formats):
        if fmt.is_float:
            continue
        w = out.get_submodule(u.fqn).weight
        names, _ = w.__tensor_flatten__()  # qdata, scale, zero_point
        stored = tensor_bytes(*(getattr(w, n) for n in names))
        layers.append(LayerBytes(u.fqn, fmt.key, fmt.nbytes(u.shape), stored))
    return out, layers


def _put_codes(out: Any, model: Any, solution: Solution, backend: Any, calib: Any) -> None:
    """Swap each torchao weight for one holding ``backend``'s codes (same layout)."""
    import torch
    from torchao.quantization import IntxUnpackedToInt8Tensor

    handle = backend.apply(model, solution, calib=calib)
    try:
        kept = dict(handle.tensors)
    finally:
        handle.restore()
    for u, fmt in zip(solution.space.units, solution.formats):
        q, module = kept[u.name], out.get_submodule(u.fqn)
        if fmt.is_float:
            module.weight = torch.nn.Parameter(q.weight.to(module.weight.dtype), False)
            continue
        w = module.weight
        zero = torch.zeros_like(q.scale, dtype=torch.int8)
        if q.zero is not None:  # bitalloc's codes are 0..2^b-1, torchao's signed
            zero = (q.zero - 2 ** (fmt.bits - 1)).to(torch.int8)
            qdata = q.codes - 2 ** (fmt.bits - 1)
        else:
            qdata = q.codes
        new = IntxUnpackedToInt8Tensor(
            qdata.reshape(w.qdata.shape).to(torch.int8),
            q.scale.to(w.scale.dtype).reshape(w.scale.shape),
            zero.reshape(w.zero_point.shape),
            target_dtype=w.target_dtype,
            block_size=w.block_size,
            dtype=w.dtype,
            activation_quantization=w.activation_quantization,
        )
        module.weight = torch.nn.Parameter(new, requires_grad=False)
