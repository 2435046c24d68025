"""Exporters: write a plan as another toolkit's per-layer quantization config.

``bitalloc.available("exporter")`` lists them; ``bitalloc.export(solution, target, path)``
checks the plan against the target's runtime rules, optionally fixes it, and writes the file.
"""

from ...search.registry import Registry
from .base import Exporter, ExportViolations, Violation, raised_units

EXPORTERS: Registry[Exporter] = Registry("exporter")

from .compressed_tensors import CompressedTensorsExporter  # noqa: E402  (registers itself)
from .gptqmodel import GPTQModelExporter  # noqa: E402
from .hqq import HqqExporter  # noqa: E402
from .llamacpp import LlamaCppExporter  # noqa: E402
from .modelopt import ModelOptExporter  # noqa: E402
from .torchao import TorchAoExporter  # noqa: E402

__all__ = [
    "EXPORTERS",
    "CompressedTensorsExporter",
    "GPTQModelExporter",
    "HqqExporter",
    "LlamaCppExporter",
    "ModelOptExporter",
    "TorchAoExporter",
    "ExportViolations",
    "Exporter",
    "Violation",
    "raised_units",
]
