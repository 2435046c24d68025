"""Triton dequant-matmul launchers: ``y = x @ dequant(W)^T`` straight from the packed layout.

Two kernels (``bitalloc/kernels/_triton_jit.py``):

- ``gemv``: batch 1 or small ``M`` (``M <= GEMV_MAX_M``): each program dequantizes a
  ``BLOCK_N x BLOCK_K`` weight tile and reduces it against one activation row (memory bound,
  the decode case).
- ``gemm``: larger batches: ``BLOCK_M x BLOCK_N`` output tiles, the dequantized ``W^T`` tile is
  cast to the activation dtype and multiplied with ``tl.dot`` (fp32 activations use
  ``input_precision="ieee"``, no TF32), fp32 accumulation.

On a GPU the block sizes are autotuned (``triton.autotune`` keyed on M, N, K); under the
interpreter (``TRITON_INTERPRET=1``, CPU tensors) a fixed small configuration is launched so no
autotuning benchmark runs. triton is imported only inside these functions.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import Any

import torch

from .pack import PackedWeight

SUPPORTED_BITS = (2, 3, 4, 8)
ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GEMV_MAX_M = 4
KERNELS = ("auto", "gemv", "gemm")
INTERPRETER_GEMV = {"BLOCK_N": 16, "BLOCK_K": 32}
INTERPRETER_GEMM = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for the CPU interpreter (same truthy set as triton)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def triton_importable() -> bool:
    """Whether the ``triton`` package is installed (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_usable(device: torch.device | str) -> bool:
    """Triton can run for tensors on ``device``: CUDA with triton, or CPU under the interpreter."""
    if not triton_importable():
        return False
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and interpreter_enabled())


def _jit() -> ModuleType:
    """The kernel module, (re)built in the current interpret/compile mode."""
    from . import _triton_jit

    if _triton_jit.INTERPRET != interpreter_enabled():
        _triton_jit = importlib.reload(_triton_jit)
    return _triton_jit


def check_operands(x: torch.Tensor, pw: PackedWeight, bits: tuple[int, ...] | None = None) -> None:
    """Raise ``ValueError`` naming the bad argument unless ``pw`` is a :class:`PackedWeight`
    (of a width in ``bits``, when given) and ``x`` an fp16/bf16/fp32 ``[..., in_features]``."""
    if not isinstance(pw, PackedWeight):
        raise ValueError(f"`pw` must be a PackedWeight, got {type(pw).__name__}")
    if bits is not None and pw.bits not in bits:
        raise ValueError(f"`bits` must be one of {bits} for the Triton kernels, got {pw.bits}")
    if not isinstance(x, torch.Tensor) or x.dtype not in ACT_DTYPES:
        raise ValueError(
            f"`x` must be a float16/bfloat16/float32 tensor, got "
            f"{getattr(x, 'dtype', type(x).__name__)}"
        )
    if x.dim() < 1 or x.shape[-1] != pw.in_features:
        raise ValueError(
            f"`x` last dim must be in_features={pw.in_features}, got shape {tuple(x.shape)}"
        )


def check_inputs(x: torch.Tensor, pw: PackedWeight) -> None:
    """Raise ``ValueError`` naming the bad argument for inputs the kernels do not take."""
    check_operands(x, pw, SUPPORTED_BITS)
    if x.device != pw.device:
        raise ValueError(f"`x` is on {x.device} but the packed weight is on {pw.device}")


def _launch_args(x2: torch.Tensor, pw: PackedWeight, y: torch.Tensor) -> tuple[list[Any], dict]:
    n, k = pw.out_features, pw.in_features
    zeros = pw.zeros if pw.zeros is not None else pw.codes  # dummy pointer, never read
    args = [
        x2,
        pw.codes,
        pw.scales,
        zeros,
        y,
        x2.shape[0],
        n,
        k,
        pw.n_groups,
        pw.codes.numel(),
        zeros.numel(),
    ]
    meta = {
        "BITS": pw.bits,
        "GROUP_SIZE": pw.group_size if pw.group_size is not None else k,
        "PER_CHANNEL": pw.group_size is None,
        "HAS_ZERO": pw.zeros is not None,
    }
    return args, meta


def triton_dequant_matmul(
    x: torch.Tensor,
    pw: PackedWeight,
    kernel: str = "auto",
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """``x @ W^T`` with ``W`` dequantized on the fly from ``pw``; output dtype ``x.dtype``.

    Args:
        x: activations ``[..., in_features]`` (fp16/bf16/fp32) on the weight's device.
        pw: the packed weight (bits 2/3/4/8, any group size dividing in_features).
        kernel: ``"gemv"``, ``"gemm"`` or ``"auto"`` (gemv when ``M <= GEMV_MAX_M``).
        config: explicit block sizes (skips autotuning), e.g. ``{"BLOCK_N": 32, "BLOCK_K": 128}``.
    """
    check_inputs(x, pw)
    if kernel not in KERNELS:
        raise ValueError(f"`kernel` must be one of {KERNELS}, got {kernel!r}")
    if not triton_usable(x.device):
        raise ValueError(
            f"the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 with CPU "
            f"tensors) and an installed triton; `x` is on {x.device}"
        )
    jit = _jit()
    lead = x.shape[:-1]
    x2 = x.reshape(-1, pw.in_features).contiguous()
    m, n = x2.shape[0], pw.out_features
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y.reshape(*lead, n)
    args, meta = _launch_args(x2, pw, y)
    use_gemv = kernel == "gemv" or (kernel == "auto" and m <= GEMV_MAX_M)
    fixed = (
        config
        if config is not None
        else ((INTERPRETER_GEMV if use_gemv else INTERPRETER_GEMM) if jit.INTERPRET else None)
    )
    if use_gemv:
        fn = jit.gemv_kernel if fixed else jit.gemv_tuned
        meta.update(fixed or {})
        grid = lambda c: (triton_cdiv(n, c["BLOCK_N"]), m)  # noqa: E731
    else:
        fn = jit.gemm_kernel if fixed else jit.gemm_tuned
        # fp32 activations: an IEEE fp32 dot. bf16 under the interpreter too: triton 3.7.1's
        # interpreter returns garbage for tl.dot on bf16 operands (compiled kernels are fine).
        fp32_dot = x.dtype == torch.float32 or (jit.INTERPRET and x.dtype == torch.bfloat16)
        meta.update(fixed or {}, FP32_DOT=fp32_dot)
        grid = lambda c: (triton_cdiv(m, c["BLOCK_M"]), triton_cdiv(n, c["BLOCK_N"]))  # noqa: E731
    fn[grid](*args, **meta)
    return y.reshape(*lead, n)


def triton_cdiv(a: int, b: int) -> int:
    """Ceiling division (``triton.cdiv`` without importing triton)."""
    return -(-a // b)
