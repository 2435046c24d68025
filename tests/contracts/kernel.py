"""Contract every registered dequant-matmul implementation satisfies (``impl_bits()``).

Each implementation equals the torch reference by SQNR on packed weights of every bit width it
declares, grouped and per-channel, asymmetric and symmetric, fp32 and fp16 activations, with
the output shape and dtype of the input. Triton runs on CPU tensors under
``TRITON_INTERPRET=1``, so the shapes are tiny.
"""

from __future__ import annotations

import pytest
import torch

from bitalloc.kernels.matmul import dequant_matmul, dequant_matmul_reference, impl_bits
from bitalloc.kernels.pack import pack_weight

MIN_DB = {torch.float32: 100.0, torch.float16: 55.0}  # output rounding bounds the agreement


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    ref, approx = ref.double(), approx.double()
    err = (ref - approx).pow(2).sum()
    return float("inf") if err == 0 else float(10 * torch.log10(ref.pow(2).sum() / err))


class KernelContract:
    """Every implementation against the reference."""

    @pytest.fixture(params=sorted(impl_bits()))
    def impl(self, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        return str(request.param)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    def test_equals_the_reference(self, impl: str, dtype: torch.dtype) -> None:
        gen = torch.Generator().manual_seed(3)
        for bits in impl_bits()[impl]:
            for group, sym in ((32, False), (None, True)):
                w = torch.randn(16, 64, generator=gen) * 0.1
                pw = pack_weight(w, bits, group, sym)
                x = torch.randn(2, 3, 64, generator=gen).to(dtype)
                ref = dequant_matmul_reference(x, pw)
                y = dequant_matmul(x, pw, impl=impl)
                assert y.shape == ref.shape == (2, 3, 16) and y.dtype == dtype
                assert sqnr_db(ref, y) > MIN_DB[dtype], (impl, bits, group, sym)
