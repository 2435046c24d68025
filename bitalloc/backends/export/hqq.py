"""HQQ through transformers' ``HqqConfig(dynamic_config=...)``: one format per linear tag.

The quantizer looks each module up by its tag, the last two name components
(``self_attn.q_proj``, ``mlp.down_proj``), so a format cannot change across blocks: every unit
with the same tag must share one format (huggingface/transformers ``HqqConfig``,
quantizer_hqq.py; exports.md section 4). Float units' tags are left out (unquantized). HQQ
always stores a zero point, so symmetric plan formats are kept with more precision.

Runtime rules: ``runtime="transformers"``: nbits 2/3/4/8 (HQQ's 1-bit has no bitalloc format),
group dividing the row; ``runtime="vllm"``: 4-bit group 64 only (vllm-project/vllm#9766).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...search.formats import QuantFormat
from ...search.solution import Solution
from ...search.space import Unit
from . import EXPORTERS
from .base import ExportViolations, LayerBytes, tensor_bytes
from .rules import RuleExporter, Rules

HQQ_RUNTIMES = ("transformers", "vllm")


def linear_tag(fqn: str) -> str:
    """HQQ's tag of a module: its last two name components."""
    return ".".join(fqn.split(".")[-2:])


@EXPORTERS.register("hqq")
@dataclass(frozen=True, slots=True)
class HqqExporter(RuleExporter):
    """Writes ``HqqConfig`` keyword arguments (``HqqConfig(**json.load(f))``).

    Args:
        runtime: ``"transformers"`` (2/3/4/8-bit) or ``"vllm"`` (4-bit g64 only).
    """

    runtime: str = "transformers"
    name: ClassVar[str]
    suffix: ClassVar[str] = ".json"

    def __post_init__(self) -> None:
        if self.runtime not in HQQ_RUNTIMES:
            raise ValueError(f"`runtime` must be one of {HQQ_RUNTIMES}, got {self.runtime!r}")

    def rules(self) -> Rules:
        if self.runtime == "vllm":
            return Rules("HQQ on vLLM", bits=(4,), groups=(64,))
        return Rules("HQQ", bits=(2, 3, 4, 8))

    def group_key(self, unit: Unit) -> str | None:
        return linear_tag(unit.fqn)

    def render(self, solution: Solution) -> dict[str, Any]:
        bad = self.check(solution)
        if bad:
            raise ExportViolations(type(self).name, bad)
        dynamic: dict[str, dict[str, Any]] = {}
        for u, key in zip(solution.space.units, solution.choice):
            fmt = QuantFormat.parse(key)
            if not fmt.is_float:
                dynamic[linear_tag(u.fqn)] = {"nbits": fmt.bits, "group_size": fmt.group_size}
        first = next(iter(dynamic.values()), {"nbits": 4, "group_size": 64})
        return {
            "quant_method": "hqq",
            "nbits": first["nbits"],
            "group_size": first["group_size"],
            "axis": 1,
            "view_as_float": False,
            "dynamic_config": dynamic,
            "skip_modules": ["lm_head"],
        }


def quantize_model(
    model: Any, solution: Solution, *, compute_dtype: Any = None
) -> tuple[Any, list[LayerBytes]]:
    """A copy of ``model`` quantized by HQQ's own engine from the export, on CPU.

    ``HqqConfig`` in transformers 5.24 cannot quantize ("QuantizationMethod.HQQ is not
    available yet"), so this runs HQQ's ``AutoHQQHFModel.quantize_model`` with the exported
    ``dynamic_config`` as its per-tag ``BaseQuantizeConfig`` table: HQQ's half-quadratic
    optimizer fits its own scales and zero points. Float units' tags are absent and stay float.
    The bytes per layer are HQQ's ``W_q`` (bit-packed, one group per row: 2/4/8-bit codes
    exactly, 3-bit codes ten to an int32 word with the groups padded to a multiple of ten, so
    3.2 bits), ``scale`` and ``zero`` (``compute_dtype``, float32 by default).
    """
    import copy

    import torch
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
    from hqq.models.hf.base import AutoHQQHFModel

    config = HqqExporter().render(solution)  # ExportViolations before any work
    table: dict[str, Any] = {
        tag: BaseQuantizeConfig(nbits=v["nbits"], group_size=v["group_size"])
        for tag, v in config["dynamic_config"].items()
    }
    for u in solution.space.units:  # tags the plan keeps float: HQQ leaves them alone
        table.setdefault(linear_tag(u.fqn), None)
    out = copy.deepcopy(model)
    dtype = torch.float32 if compute_dtype is None else compute_dtype
    AutoHQQHFModel.quantize_model(out, quant_config=table, compute_dtype=dtype, device="cpu")
    layers = []
    for u, fmt in zip(solution.space.units, solution.formats):
        layer = out.get_submodule(u.fqn)
        if fmt.is_float:
            continue
        if not isinstance(layer, HQQLinear):
            raise RuntimeError(f"HQQ left {u.fqn} unquantized")
        stored = tensor_bytes(layer.W_q, layer.meta["scale"], layer.meta["zero"])
        layers.append(LayerBytes(u.fqn, fmt.key, fmt.nbytes(u.shape), stored))
    return out, layers
