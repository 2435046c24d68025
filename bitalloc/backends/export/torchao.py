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
from .base import ExportViolations, name_patterns
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
