"""Dequant-matmul: the torch reference, the dispatcher, and the Triton kernels (interpreter).

The Triton kernels run on CPU tensors under ``TRITON_INTERPRET=1`` (set per test through
``monkeypatch``); shapes are tiny because the interpreter executes every program in Python.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from contracts.kernel import KernelContract

from bitalloc.kernels import triton_dequant
from bitalloc.kernels.matmul import (
    available_impls,
    dequant_matmul,
    dequant_matmul_reference,
    pick_impl,
)
from bitalloc.kernels.pack import PackedWeight, pack_weight
from bitalloc.kernels.reference import dequantize, quantize
from bitalloc.kernels.triton_dequant import triton_dequant_matmul

# output rounding bounds the agreement: fp32 sums differ only in order, fp16/bf16 outputs
# differ by at most a rounding step of the output dtype
MIN_DB = {torch.float32: 100.0, torch.float16: 55.0, torch.bfloat16: 38.0}


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    ref, approx = ref.double(), approx.double()
    err = (ref - approx).pow(2).sum()
    return float("inf") if err == 0 else float(10 * torch.log10(ref.pow(2).sum() / err))


@pytest.fixture
def interp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _case(n: int, k: int, bits: int, group: int | None, sym: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.1
    return w, pack_weight(w, bits, group, sym), gen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [False, True])
def test_reference_matches_dense_dequantized_matmul(dtype: torch.dtype, symmetric: bool) -> None:
    w, pw, gen = _case(24, 128, 3, 32, symmetric, 0)
    x = torch.randn(2, 3, 128, generator=gen).to(dtype)
    q, scale, zero = quantize(w, 3, 32, symmetric)
    dense = dequantize(q, scale, zero, w.shape)
    y = dequant_matmul_reference(x, pw)
    assert y.shape == (2, 3, 24) and y.dtype == dtype
    want = (x.float() @ dense.T).to(dtype)
    assert sqnr_db(want, y) > (60.0 if dtype == torch.float32 else MIN_DB[dtype])
    assert torch.equal(dequant_matmul(x, pw), y)  # auto on CPU is the reference


GRID = [
    (bits, group, sym, dtype, m)
    for bits in (2, 3, 4, 8)
    for group in (32, 64, None)
    for sym in (False, True)
    for dtype in (torch.float32, torch.float16)
    for m in (1, 5)
]


@pytest.mark.parametrize(("bits", "group", "sym", "dtype", "m"), GRID)
def test_triton_kernels_match_reference(
    interp: None, bits: int, group: int | None, sym: bool, dtype: torch.dtype, m: int
) -> None:
    n, k = (16, 64) if (bits + m) % 2 else (24, 128)  # both shapes across the grid
    _, pw, gen = _case(n, k, bits, group, sym, bits * 7 + m)
    x = torch.randn(m, k, generator=gen).to(dtype)
    ref = dequant_matmul_reference(x, pw)
    for kernel in ("gemv", "gemm"):
        y = triton_dequant_matmul(x, pw, kernel=kernel)
        assert y.shape == ref.shape and y.dtype == dtype
        assert sqnr_db(ref, y) > MIN_DB[dtype], kernel


@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
@pytest.mark.parametrize(("bits", "sym"), [(3, False), (2, True), (8, False)])
def test_bf16_and_masked_edges(interp: None, kernel: str, bits: int, sym: bool) -> None:
    # K=40 per-channel: a partial K tile, N=20: a partial N tile; 3-bit codes straddle the
    # last byte of the buffer
    _, pw, gen = _case(20, 40, bits, None, sym, 3)
    x = torch.randn(3, 40, generator=gen).bfloat16()
    y = triton_dequant_matmul(x, pw, kernel=kernel)
    assert sqnr_db(dequant_matmul_reference(x, pw), y) > MIN_DB[torch.bfloat16]
    x32 = x.float()
    assert sqnr_db(dequant_matmul_reference(x32, pw), triton_dequant_matmul(x32, pw)) > 100


def test_dispatcher_runs_triton_on_request_and_keeps_batch_dims(interp: None) -> None:
    _, pw, gen = _case(16, 64, 4, 32, False, 5)
    x = torch.randn(2, 3, 64, generator=gen)
    assert "triton" in available_impls("cpu")
    y = dequant_matmul(x, pw, impl="triton")
    assert y.shape == (2, 3, 16)
    assert sqnr_db(dequant_matmul_reference(x, pw), y) > 100
    assert pick_impl(x, pw) == "reference"  # the interpreter only runs when asked for
    # explicit block sizes (the GPU autotuner's alternative) give the same answer
    y2 = triton_dequant_matmul(
        x, pw, kernel="gemm", config={"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64}
    )
    assert sqnr_db(y, y2) > 100


def test_interpreter_needs_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _, pw, gen = _case(16, 64, 4, 32, False, 6)
    x = torch.randn(1, 64, generator=gen)
    assert available_impls("cpu") == ("reference",)
    with pytest.raises(ValueError, match="`impl`"):
        dequant_matmul(x, pw, impl="triton")
    with pytest.raises(ValueError, match="Triton kernels need CUDA"):
        triton_dequant_matmul(x, pw)
    assert triton_dequant._jit().INTERPRET is False  # rebuilt in compiled mode
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_dequant._jit().INTERPRET is True  # and back


def test_interpreter_works_when_triton_was_imported_first() -> None:
    # another library importing triton before TRITON_INTERPRET=1 builds triton.language's own
    # @jit helpers in compiled mode; the kernels must not depend on them
    code = (
        "import os, torch, triton, triton.language\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from bitalloc.kernels.pack import pack_weight\n"
        "from bitalloc.kernels.matmul import dequant_matmul_reference as ref\n"
        "from bitalloc.kernels.triton_dequant import triton_dequant_matmul as tri\n"
        "pw = pack_weight(torch.randn(16, 64), 3, 32)\n"
        "for m, k in ((1, 'gemv'), (5, 'gemm')):\n"
        "    x = torch.randn(m, 64)\n"
        "    assert torch.allclose(tri(x, pw, kernel=k), ref(x, pw), atol=1e-4), k\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_bad_inputs_name_the_argument(interp: None) -> None:
    w, pw, gen = _case(16, 64, 4, 32, False, 7)
    x = torch.randn(1, 64, generator=gen)
    with pytest.raises(ValueError, match="`bits`"):
        triton_dequant_matmul(x, pack_weight(w, 5, 32))
    with pytest.raises(ValueError, match="`group_size`"):
        PackedWeight(pw.codes, pw.scales, pw.zeros, 4, 48, pw.shape)
    with pytest.raises(ValueError, match="not divisible"):
        pack_weight(w, 4, 48)
    for bad in (x.double(), x.to(torch.int32)):
        with pytest.raises(ValueError, match="`x`"):
            triton_dequant_matmul(bad, pw)
        with pytest.raises(ValueError, match="`x`"):
            dequant_matmul(bad, pw)
    with pytest.raises(ValueError, match="`x`"):
        triton_dequant_matmul(torch.randn(1, 32), pw)
    with pytest.raises(ValueError, match="`kernel`"):
        triton_dequant_matmul(x, pw, kernel="splitk")
    with pytest.raises(ValueError, match="`impl`"):
        dequant_matmul(x, pw, impl="cuda")
    with pytest.raises(ValueError, match="`pw`"):
        dequant_matmul_reference(x, w)  # type: ignore[arg-type]
    # 5-bit weights still run through the reference (auto never picks Triton for them)
    assert dequant_matmul(x, pack_weight(w, 5, 32)).shape == (1, 16)


class TestKernelContract(KernelContract):
    """tests/contracts/kernel.py over every registered implementation."""
