"""Kernels: plain tensor functions (a leaf package: knows no search types).

``reference`` holds the pure-torch quantize/dequantize ops used on every device; they are the
numerical oracle for any faster kernel added later.
"""

from .reference import dequantize, fake_quantize, quantize

__all__ = ["dequantize", "fake_quantize", "quantize"]
