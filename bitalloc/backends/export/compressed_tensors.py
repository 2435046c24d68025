"""compressed-tensors / llm-compressor ``quantization_config`` (``config_groups`` + ``ignore``).

One config group per integer format, its ``targets`` the ``re:`` patterns of exactly the
planned modules (``re.match``, end-anchored); float units and ``lm_head`` go to ``ignore``
(vllm-project/compressed-tensors ``QuantizationConfig``; exports.md section 2). Runtime rules:

- ``runtime="vllm"`` (default): vLLM's WNA16 path serves 4- and 8-bit integer weights with
  per-channel or 32/64/128 groups, and resolves fused ``qkv_proj``/``gate_up_proj`` only when
  every shard has the same scheme ("vLLM requires all to use the same scheme");
- ``runtime="transformers"``: decompression in transformers reads any 2..8-bit integer grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...search.formats import QuantFormat
from ...search.solution import Solution
from . import EXPORTERS
from .base import ExportViolations, name_patterns
from .rules import RuleExporter, Rules

RUNTIMES = ("vllm", "transformers")


@EXPORTERS.register("compressed-tensors")
@dataclass(frozen=True, slots=True)
class CompressedTensorsExporter(RuleExporter):
    """Writes ``config.json["quantization_config"]`` for compressed-tensors checkpoints.

    Args:
        runtime: ``"vllm"`` (4/8-bit, per-channel or g32/g64/g128, fused shards agree) or
            ``"transformers"`` (2..8-bit, any group).
    """

    runtime: str = "vllm"
    name: ClassVar[str]
    suffix: ClassVar[str] = ".json"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"`runtime` must be one of {RUNTIMES}, got {self.runtime!r}")

    def rules(self) -> Rules:
        if self.runtime == "vllm":
            return Rules(
                "compressed-tensors on vLLM", bits=(4, 8), groups=(None, 32, 64, 128), fused=True
            )
        return Rules("compressed-tensors", bits=(2, 3, 4, 5, 6, 7, 8))

    def render(self, solution: Solution) -> dict[str, Any]:
        bad = self.check(solution)
        if bad:
            raise ExportViolations(type(self).name, bad)
        by_key: dict[str, list[str]] = {}
        ignore: list[str] = []
        for u, key in zip(solution.space.units, solution.choice):
            if QuantFormat.parse(key).is_float:
                ignore.append(u.fqn)
            else:
                by_key.setdefault(key, []).append(u.fqn)
        if not any(n.split(".")[-1] == "lm_head" for n in solution.space.names):
            ignore.append("lm_head")
        groups = {
            f"group_{j}": {
                "targets": ["re:" + p for p in name_patterns(names)],
                "weights": weight_args(QuantFormat.parse(key)),
                "input_activations": None,
                "output_activations": None,
            }
            for j, (key, names) in enumerate(sorted(by_key.items()))
        }
        return {
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "quantization_status": "compressed",
            "config_groups": groups,
            "ignore": list(dict.fromkeys(ignore)),
            "kv_cache_scheme": None,
            "global_compression_ratio": None,
            "sparsity_config": {},
        }


def weight_args(fmt: QuantFormat) -> dict[str, Any]:
    """compressed-tensors ``QuantizationArgs`` of an integer format (weights, static)."""
    args: dict[str, Any] = {
        "num_bits": fmt.bits,
        "type": "int",
        "symmetric": fmt.symmetric,
        "strategy": "channel" if fmt.group_size is None else "group",
        "dynamic": False,
    }
    if fmt.group_size is not None:
        args["group_size"] = fmt.group_size
    return args
