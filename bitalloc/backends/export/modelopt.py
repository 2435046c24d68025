"""NVIDIA ModelOpt ``quant_cfg``: per-quantizer entries for ``mtq.quantize`` (YAML recipe).

Entries apply in order, later wins (NVIDIA/Model-Optimizer modelopt/torch/quantization/config.py;
exports.md section 6): a deny-all ``{"quantizer_name": "*", "enable": false}``, then one entry
per planned weight quantizer (``*model.layers.0.mlp.down_proj.weight_quantizer``, a glob that
is end-anchored) with ``num_bits`` and ``block_sizes: {-1: G}`` (per-group) or ``axis: 0``
(per-channel), then ``*lm_head*`` off. Activations stay unquantized (weight-only); float units
stay disabled. YAML keeps the integer ``-1`` key that JSON would turn into a string.

Runtime rules: ModelOpt integer quantizers have no zero point (symmetric only). With
``deploy=True`` (default) the checkpoint export serves INT4 with block 64/128 (W4A16 AWQ) and
INT8 per-channel weight-only, and TensorRT-LLM/vLLM fuse q/k/v and gate/up, so those must agree;
``deploy=False`` accepts any symmetric 2..8-bit grid for fake-quant studies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...search.formats import QuantFormat
from ...search.solution import Solution
from . import EXPORTERS
from .base import ExportViolations, LayerBytes, tensor_bytes
from .rules import RuleExporter, Rules


@EXPORTERS.register("modelopt")
@dataclass(frozen=True, slots=True)
class ModelOptExporter(RuleExporter):
    """Writes a ModelOpt quantization config ``{"quant_cfg": [...], "algorithm": ...}``.

    Args:
        deploy: enforce what ModelOpt's checkpoint export serves (int4 g64/g128, int8 pc).
        algorithm: calibration algorithm name (``"max"``, ``"awq_lite"``, ...).
    """

    deploy: bool = True
    algorithm: str = "max"
    name: ClassVar[str]
    suffix: ClassVar[str] = ".yaml"

    def __post_init__(self) -> None:
        if not isinstance(self.algorithm, str) or not self.algorithm:
            raise ValueError(
                f"`algorithm` must be a ModelOpt algorithm name, got {self.algorithm!r}"
            )

    def rules(self) -> Rules:
        if self.deploy:
            return Rules(
                "ModelOpt export",
                bits=(4, 8),
                pairs=((4, 64), (4, 128), (8, None)),
                symmetric=(True,),
                fused=True,
            )
        return Rules("ModelOpt", bits=(2, 3, 4, 5, 6, 7, 8), symmetric=(True,))

    def render(self, solution: Solution) -> dict[str, Any]:
        bad = self.check(solution)
        if bad:
            raise ExportViolations(type(self).name, bad)
        entries: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
        for u, key in zip(solution.space.units, solution.choice):
            fmt = QuantFormat.parse(key)
            if fmt.is_float:
                continue
            entry = {
                "quantizer_name": f"*{u.fqn}.weight_quantizer",
                "cfg": quantizer_cfg(fmt),
                "enable": True,
            }
            if entry not in entries:
                entries.append(entry)
        entries.append({"quantizer_name": "*lm_head*", "enable": False})
        return {"quant_cfg": entries, "algorithm": self.algorithm}

    def serialize(self, rendered: str | dict[str, Any]) -> str:
        import yaml

        if isinstance(rendered, str):
            return rendered
        return yaml.safe_dump(rendered, sort_keys=False, default_flow_style=None)


def quantizer_cfg(fmt: QuantFormat) -> dict[str, Any]:
    """ModelOpt ``QuantizerAttributeConfig`` attributes of a symmetric integer format."""
    if fmt.group_size is None:
        return {"num_bits": fmt.bits, "axis": 0}
    return {
        "num_bits": fmt.bits,
        "block_sizes": {-1: fmt.group_size, "type": "static"},
        "axis": None,
    }


def quantize_model(
    model: Any, solution: Solution, *, calib: Any = None, compress: bool = True
) -> tuple[Any, list[LayerBytes]]:
    """A copy of ``model`` quantized by ModelOpt's own ``mtq.quantize`` from the export, on CPU.

    The exported ``quant_cfg`` drives ``mtq.quantize`` (max calibration of the weight
    quantizers over ``calib``'s batches, or one short batch without it). With ``compress``
    (deploy plans only: int4 g64/g128, int8 per channel) ``mtq.compress`` then stores real
    codes: int4 packed two per byte, int8 one per byte, one float32 scale per group. Without it
    the weights stay fake-quantized floats and no bytes are reported.
    """
    import copy

    import modelopt.torch.quantization as mtq
    import torch

    exporter = ModelOptExporter(deploy=compress)
    config = exporter.render(solution)  # ExportViolations before any work
    out = copy.deepcopy(model)
    batches = list(calib.batches) if calib is not None else [torch.arange(16).reshape(1, 16)]

    def forward_loop(m: Any) -> None:
        with torch.no_grad():
            for ids in batches:
                m(ids)

    mtq.quantize(out, config, forward_loop=forward_loop)
    layers: list[LayerBytes] = []
    if not compress:
        return out, layers
    mtq.compress(out)
    for u, fmt in zip(solution.space.units, solution.formats):
        if fmt.is_float:
            continue
        layer = out.get_submodule(u.fqn)
        stored = tensor_bytes(_raw(layer.weight), layer.weight_quantizer._scale)
        layers.append(LayerBytes(u.fqn, fmt.key, fmt.nbytes(u.shape), stored))
    return out, layers


def _raw(weight: Any) -> Any:
    """The stored codes of a compressed weight (``QTensorWrapper.data``: uint8 int4 pairs or
    int8)."""
    return weight.data
