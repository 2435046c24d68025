"""Kernels: plain tensor functions (a leaf package: knows no search types).

``grid`` fits each group's scale and zero point (minmax, or the activation-weighted clip
search); ``reference`` holds the pure-torch quantize/dequantize ops used on every device; they
are the numerical oracle for the faster kernels: ``pack`` (bitstream layout,
``PackedWeight``), ``matmul`` (dequant-matmul reference + dispatcher) and ``triton_dequant``
(Triton kernels, triton imported lazily).
"""

from .grid import fit_grid, weighted_error
from .matmul import available_impls, dequant_matmul, dequant_matmul_reference
from .pack import PackedWeight, pack_bits, pack_weight, unpack_bits, unpack_weight
from .reference import dequantize, fake_quantize, quantize

__all__ = [
    "PackedWeight",
    "available_impls",
    "dequant_matmul",
    "dequant_matmul_reference",
    "dequantize",
    "fake_quantize",
    "fit_grid",
    "pack_bits",
    "pack_weight",
    "quantize",
    "unpack_bits",
    "unpack_weight",
    "weighted_error",
]
