"""Backends: materialise a plan on a model (``rtn``: round-to-nearest; ``gptq``: GPTQ/SparseGPT
from calibration data; both reversible)."""

from ..search.registry import Registry
from .base import AppliedPlan, Backend, check_plan

BACKENDS: Registry[Backend] = Registry("backend")

from .gptq import GptqBackend  # noqa: E402  (registers itself)
from .kl_evaluator import KLEvaluator  # noqa: E402
from .rtn import RtnBackend  # noqa: E402  (registers itself)
from .variants import VariantCache  # noqa: E402

BACKENDS.register_lazy("packed", "bitalloc.backends.packed:PackedBackend")
BACKENDS.register_lazy("ggml", "bitalloc.backends.ggml:GgmlBackend")  # llama.cpp's quantizers
BACKENDS.register_lazy("hqq", "bitalloc.backends.hqq_grid:HqqBackend")  # HQQ's quantizer

__all__ = [
    "BACKENDS",
    "AppliedPlan",
    "Backend",
    "GptqBackend",
    "KLEvaluator",
    "RtnBackend",
    "VariantCache",
    "check_plan",
]
