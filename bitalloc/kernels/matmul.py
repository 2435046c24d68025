"""Dequant-matmul ``y = x @ W^T`` on a packed weight: pure-torch reference + dispatcher.

Implementations are plain functions in a small availability registry:

- ``"reference"``: unpack the bitstream, dequantize exactly as :func:`reference.dequantize`,
  ``x.float() @ W.T`` (fp32 accumulation), cast to ``x.dtype``. Runs everywhere; any bits 2..8.
- ``"triton"``: :func:`triton_dequant.triton_dequant_matmul` (CUDA, or CPU tensors under
  ``TRITON_INTERPRET=1``); bits 2/3/4/8.

``dequant_matmul(x, pw, impl="auto")`` picks Triton for CUDA tensors when triton is installed and
the bit width is supported, the reference otherwise. The interpreter is only used on request
(``impl="triton"``): it is far slower than the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .pack import PackedWeight, unpack_weight
from .triton_dequant import SUPPORTED_BITS, check_operands, triton_dequant_matmul, triton_usable

IMPLS = ("auto", "reference", "triton")


def dequant_matmul_reference(x: torch.Tensor, pw: PackedWeight) -> torch.Tensor:
    """``x @ W^T`` for ``x [..., K]`` (fp16/bf16/fp32): fp32 math, output in ``x.dtype``."""
    check_operands(x, pw)
    w = unpack_weight(pw.to(x.device)).reshape(pw.out_features, pw.in_features)
    y = x.reshape(-1, pw.in_features).float() @ w.T
    return y.to(x.dtype).reshape(*x.shape[:-1], pw.out_features)


@dataclass(frozen=True)
class _Impl:
    fn: Callable[[torch.Tensor, PackedWeight], torch.Tensor]
    usable: Callable[[torch.device], bool]
    bits: tuple[int, ...]


_REGISTRY: dict[str, _Impl] = {
    "reference": _Impl(dequant_matmul_reference, lambda _d: True, (2, 3, 4, 5, 6, 7, 8)),
    "triton": _Impl(triton_dequant_matmul, triton_usable, SUPPORTED_BITS),
}


def impl_bits() -> dict[str, tuple[int, ...]]:
    """Every registered dequant-matmul implementation and the bit widths it runs."""
    return {name: impl.bits for name, impl in _REGISTRY.items()}


def available_impls(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """Implementations that can run for tensors on ``device`` here (``"reference"`` always)."""
    dev = torch.device(device)
    return tuple(name for name, impl in _REGISTRY.items() if impl.usable(dev))


def pick_impl(x: torch.Tensor, pw: PackedWeight) -> str:
    """What ``impl="auto"`` runs: Triton for CUDA tensors when usable and bits supported."""
    tri = _REGISTRY["triton"]
    if x.is_cuda and pw.bits in tri.bits and tri.usable(x.device):
        return "triton"
    return "reference"


def dequant_matmul(x: torch.Tensor, pw: PackedWeight, impl: str = "auto") -> torch.Tensor:
    """``x @ dequant(pw)^T`` by ``impl`` (``"auto"``, ``"reference"`` or ``"triton"``)."""
    if impl not in IMPLS:
        raise ValueError(f"`impl` must be one of {IMPLS}, got {impl!r}")
    name = pick_impl(x, pw) if impl == "auto" else impl
    entry = _REGISTRY[name]
    if isinstance(x, torch.Tensor) and not entry.usable(x.device):
        raise ValueError(
            f"`impl`={name!r} cannot run for tensors on {x.device} here; "
            f"available: {available_impls(x.device)}"
        )
    return entry.fn(x, pw)
