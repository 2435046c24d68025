"""torchao round trip: ``quantize_(model, FqnToConfig(...))`` from the export, on CPU. With
bitalloc's codes in torchao's tensors its forward is exactly bitalloc's fake-quant; with
torchao's own grid it is the same min-max family; the bytes torchao holds follow its unpacked
int8 layout exactly."""

from __future__ import annotations

import pytest
import torch

from bitalloc.backends import BACKENDS
from bitalloc.backends.export import ExportViolations
from bitalloc.backends.export.torchao import quantize_model
from tests.backend_helpers import random_plan, sqnr_db
from tests.conftest import make_tiny_llama

MENU = ["int2-g32", "int3-g64", "int4-g32", "int4-g32-sym", "int6-pc", "int8-pc-sym", "fp16"]


def _plan(model, seed, formats=MENU):
    return random_plan(model, formats, seed, tie=None)


def _bitalloc(model, plan, backend="rtn", calib=None):
    x = torch.arange(20).reshape(1, 20) % 97
    handle = BACKENDS.get(backend).apply(model, plan, calib=calib)
    try:
        w = {u.fqn: model.get_submodule(u.fqn).weight.detach().clone() for u in plan.space.units}
        with torch.no_grad():
            logits = model(x).logits
    finally:
        handle.restore()
    return w, logits, x


def _dense(weight):
    return weight.dequantize() if hasattr(weight, "dequantize") else weight.detach()


@pytest.mark.parametrize("seed", [0, 1])
def test_bitalloc_codes_in_torchao_tensors_compute_bitalloc_w_hat(seed: int) -> None:
    model = make_tiny_llama(hidden=64, intermediate=128)
    plan = _plan(model, seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized, _ = quantize_model(model, plan, codes="rtn")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # unchanged
    weights, logits, x = _bitalloc(model, plan)
    for u, fmt in zip(plan.space.units, plan.formats):
        w = quantized.get_submodule(u.fqn).weight
        assert fmt.is_float or type(w).__name__ == "IntxUnpackedToInt8Tensor", u.fqn
        assert torch.equal(_dense(w), weights[u.fqn]), u.fqn
    with torch.no_grad():
        assert torch.equal(quantized(x).logits, logits)


def test_gptq_codes_round_trip(tiny_calib) -> None:
    model = make_tiny_llama(hidden=64, intermediate=128)
    plan = _plan(model, 2)
    quantized, _ = quantize_model(model, plan, codes="gptq", calib=tiny_calib)
    _, logits, x = _bitalloc(model, plan, "gptq", tiny_calib)
    with torch.no_grad():
        assert torch.equal(quantized(x).logits, logits)


def test_torchao_own_grid_is_the_min_max_family() -> None:
    """torchao's own scales (its min-max convention) land within 1.5 dB of bitalloc's min-max
    grid for every layer, so the exported config means what the plan says."""
    model = make_tiny_llama(hidden=64, intermediate=128)
    plan = _plan(model, 3, [f for f in MENU if f != "fp16"])
    quantized, _ = quantize_model(model, plan)
    weights, _, _ = _bitalloc(model, plan)
    for u, fmt in zip(plan.space.units, plan.formats):
        w = model.get_submodule(u.fqn).weight.detach()
        ours, theirs = (
            sqnr_db(w, weights[u.fqn]),
            sqnr_db(w, _dense(quantized.get_submodule(u.fqn).weight)),
        )
        assert abs(ours - theirs) < 1.5, (u.fqn, fmt.key, ours, theirs)


def test_stored_bytes_are_torchao_unpacked_layout() -> None:
    model = make_tiny_llama(hidden=64, intermediate=128)
    plan = _plan(model, 0)
    _, layers = quantize_model(model, plan, codes="rtn")
    by_name = {u.fqn: (u, f) for u, f in zip(plan.space.units, plan.formats)}
    assert {lay.name for lay in layers} == {n for n, (_, f) in by_name.items() if not f.is_float}
    for lay in layers:
        u, fmt = by_name[lay.name]
        rows, cols = u.shape
        groups = fmt.n_groups(u.shape)
        assert lay.planned == fmt.nbytes(u.shape)
        assert lay.stored == rows * cols + groups * (4 + 1)  # int8 codes, fp32 scale, int8 zero


def test_bad_input_is_refused_before_work() -> None:
    model = make_tiny_llama(hidden=64, intermediate=128)
    with pytest.raises(ExportViolations, match="sparse"):
        quantize_model(model, _plan(model, 0, ["int4-g32-s0.5"]))
    with pytest.raises(ValueError, match="`codes` must be one of"):
        quantize_model(model, _plan(model, 0), codes="awq")
