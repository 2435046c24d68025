"""ggml's own quantizers, called in the built ``libggml-base`` (ctypes).

:func:`quantize` runs ``ggml_quantize_chunk``, the function ``llama-quantize`` calls per tensor,
on float32 rows (with an importance matrix when given, as ``llama-quantize --imatrix`` passes
it), and returns the bytes ggml stores; :func:`dequantize` runs the type's ``to_float``. So
``dequantize(quantize(w, t, imatrix))`` is exactly the weight a llama.cpp runtime computes with
for a tensor that ``llama-quantize`` stored as ``t`` from an F32 GGUF holding ``w``.

Rows are independent in every type used here, so a row permutation (llama.cpp's rope layout of
``attn_q``/``attn_k``) permutes the result the same way.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

from ..search.formats import GGML_TYPES
from . import llamacpp


class _Traits(ctypes.Structure):  # struct ggml_type_traits (ggml/include/ggml.h)
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@functools.lru_cache(maxsize=1)
def _lib() -> Any:
    lib = ctypes.CDLL(str(llamacpp.library("ggml-base")))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_Traits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def type_id(name: str) -> int:
    """``enum ggml_type`` value of type ``name`` (``"q4_k"``), from gguf-py's enum."""
    import gguf

    key = str(name).lower()
    if key not in GGML_TYPES and key not in ("f32", "f16", "bf16"):
        raise ValueError(f"unknown ggml type {name!r}; valid: {', '.join(GGML_TYPES)}")
    return int(gguf.GGMLQuantizationType[key.upper()])


def row_size(name: str, n_per_row: int) -> int:
    """Bytes ggml stores for one row of ``n_per_row`` weights in type ``name``."""
    return int(_lib().ggml_row_size(type_id(name), int(n_per_row)))


def quantize(w: np.ndarray, name: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml's encoding of float32 ``w`` ``[rows, n_per_row]`` in type ``name`` (uint8 bytes,
    ``[rows, row_size]``); ``imatrix`` ``[n_per_row]`` weights the rounding as
    ``llama-quantize --imatrix`` does."""
    lib, t = _lib(), type_id(name)
    src = np.ascontiguousarray(w, dtype=np.float32)
    if src.ndim != 2:
        raise ValueError(f"`w` must be 2-D [rows, n_per_row], got shape {src.shape}")
    rows, cols = src.shape
    block = GGML_TYPES[name.lower()].block
    if cols % block:
        raise ValueError(f"{name}: rows of {cols} are not a multiple of its block of {block}")
    imat = None
    if imatrix is not None:
        imat = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if imat.shape[0] != cols or not np.isfinite(imat).all():
            raise ValueError(f"`imatrix` must be {cols} finite floats, got {imatrix.shape}")
    elif lib.ggml_quantize_requires_imatrix(t):
        raise ValueError(f"ggml type {name} needs an importance matrix (`imatrix`)")
    rsize = int(lib.ggml_row_size(t, cols))
    out = np.empty((rows, rsize), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(
        t,
        src.ctypes.data,
        out.ctypes.data,
        0,
        rows,
        cols,
        None if imat is None else imat.ctypes.data,
    )
    if written != rows * rsize:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {rows * rsize}")
    return out


def dequantize(data: np.ndarray, name: str, n_per_row: int) -> np.ndarray:
    """float32 ``[rows, n_per_row]`` that ggml decodes from ``data`` (type ``name``)."""
    lib, t = _lib(), type_id(name)
    buf = np.ascontiguousarray(data, dtype=np.uint8)
    rsize = int(lib.ggml_row_size(t, int(n_per_row)))
    if buf.size % rsize:
        raise ValueError(f"{buf.size} bytes are not whole {name} rows of {rsize} bytes")
    rows = buf.size // rsize
    out = np.empty((rows, int(n_per_row)), dtype=np.float32)
    to_float = _TO_FLOAT(lib.ggml_get_type_traits(t).contents.to_float)
    to_float(buf.ctypes.data, out.ctypes.data, rows * int(n_per_row))
    return out


def roundtrip(w: np.ndarray, name: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """``dequantize(quantize(w, name, imatrix))``: the weight llama.cpp computes with."""
    return dequantize(quantize(w, name, imatrix), name, np.shape(w)[1])
