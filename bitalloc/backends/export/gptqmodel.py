"""GPTQModel ``QuantizeConfig(dynamic=...)``: a base format plus per-module regex overrides.

``dynamic`` keys are ``+:REGEX`` (apply these overrides) or ``-:REGEX`` (do not quantize), matched
with ``re.match`` in insertion order (ModelCloud/GPTQModel ``_resolve_dynamic_override``;
exports.md section 1). The base ``bits``/``group_size``/``sym`` is the integer format holding the
most weights; every other planned module gets an anchored ``+:`` override, float units a ``-:``.
vLLM matches the same patterns against its fused prefixes (``...self_attn.qkv_proj``,
``...mlp.gate_up_proj``), so every pattern also names the fused module and q/k/v and gate/up
must share a format. Modules the plan does not list get the base format.

Runtime rules: ``backend="gptq"`` (vLLM ``gptq`` kernels: 2/3/4/8 bits, any group);
``backend="gptq_marlin"`` (4/8-bit symmetric, per-channel or g32/g64/g128,
``GPTQMarlinConfig.TYPE_MAP``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from ...search.formats import QuantFormat
from ...search.solution import Solution
from . import EXPORTERS
from .base import ExportViolations, fused_name, name_patterns
from .rules import RuleExporter, Rules

GPTQ_BACKENDS = ("gptq", "gptq_marlin")


@EXPORTERS.register("gptqmodel")
@dataclass(frozen=True, slots=True)
class GPTQModelExporter(RuleExporter):
    """Writes ``quantize_config.json`` / ``config.json["quantization_config"]`` with ``dynamic``.

    Args:
        backend: ``"gptq"`` (2/3/4/8-bit) or ``"gptq_marlin"`` (4/8-bit symmetric, fast).
    """

    backend: str = "gptq"
    name: ClassVar[str]
    suffix: ClassVar[str] = ".json"

    def __post_init__(self) -> None:
        if self.backend not in GPTQ_BACKENDS:
            raise ValueError(f"`backend` must be one of {GPTQ_BACKENDS}, got {self.backend!r}")

    def rules(self) -> Rules:
        if self.backend == "gptq_marlin":
            return Rules(
                "GPTQ Marlin",
                bits=(4, 8),
                groups=(None, 32, 64, 128),
                symmetric=(True,),
                fused=True,
            )
        return Rules("GPTQ", bits=(2, 3, 4, 8), fused=True)

    def render(self, solution: Solution) -> dict[str, Any]:
        bad = self.check(solution)
        if bad:
            raise ExportViolations(type(self).name, bad)
        weights: Counter[str] = Counter()
        by_key: dict[str, list[str]] = {}
        shards: Counter[str] = Counter()
        for u, key in zip(solution.space.units, solution.choice):
            by_key.setdefault(key, []).append(u.fqn)
            shards[str(fused_name(u.fqn))] += 1
            if not QuantFormat.parse(key).is_float:
                weights[key] += u.numel
        base = QuantFormat.parse(
            max(weights, key=lambda k: (weights[k], k)) if weights else "int4-g128-sym"
        )
        dynamic: dict[str, dict[str, Any]] = {}
        for key, names in sorted(by_key.items()):
            fmt = QuantFormat.parse(key)
            if fmt == base:
                continue
            fused = [f for n in names if (f := fused_name(n)) is not None and shards[f] > 1]
            for pattern in name_patterns([*names, *fused]):
                if fmt.is_float:
                    dynamic["-:" + pattern] = {}
                else:
                    dynamic["+:" + pattern] = {**_args(fmt), "desc_act": False}
        return {
            "quant_method": "gptq",
            "checkpoint_format": "gptq",
            **_args(base),
            "desc_act": False,
            "lm_head": False,
            "pack_dtype": "int32",
            "dynamic": dynamic,
        }


def _args(fmt: QuantFormat) -> dict[str, Any]:
    return {"bits": fmt.bits, "group_size": fmt.group_size or -1, "sym": fmt.symmetric}
