"""HQQ and ModelOpt round trips on CPU, each by the toolkit's own engine from bitalloc's
export: every planned layer takes the planned grid, the bytes the toolkit holds follow its own
layout exactly, and its weights are at least as close to the float ones as bitalloc's min-max
grid of the same format."""

from __future__ import annotations

import pytest
import torch

from bitalloc.backends import BACKENDS
from bitalloc.backends.export import EXPORTERS, ExportViolations
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace
from tests.backend_helpers import fake_quant_weights, random_plan, sqnr_db
from tests.conftest import make_tiny_llama


def _plan(model, formats, target, seed=0):
    return EXPORTERS.get(target).fix(random_plan(model, formats, seed, tie=None))


def test_hqq_engine_quantizes_each_tag_as_planned() -> None:
    from hqq.core.quantize import HQQLinear

    from bitalloc.backends.export.hqq import quantize_model

    model = make_tiny_llama(hidden=64, intermediate=128)
    plan = _plan(model, ["int2-g32", "int3-g64", "int4-g64", "int8-g32", "bf16"], "hqq", seed=1)
    assert any(f.is_float for f in plan.formats) and not all(f.is_float for f in plan.formats)
    assert any(f.bits == 3 for f in plan.formats)
    quantized, layers = quantize_model(model, plan)
    ours = fake_quant_weights(model, plan)
    by_name = {lay.name: lay for lay in layers}
    for u, fmt in zip(plan.space.units, plan.formats):
        layer = quantized.get_submodule(u.fqn)
        if fmt.is_float:
            assert not isinstance(layer, HQQLinear), u.fqn
            continue
        assert isinstance(layer, HQQLinear), u.fqn
        assert (layer.meta["nbits"], layer.meta["group_size"]) == (fmt.bits, fmt.group_size)
        groups = fmt.n_groups(u.shape)
        rows, cols = u.shape
        # W_q bit-packed (one group per row; 3-bit codes go 10 to an int32 word, the group
        # rows padded to a multiple of 10), scale and zero float32 per group
        codes = rows * cols * fmt.bits // 8
        if fmt.bits == 3:
            codes = 4 * fmt.group_size * -(-groups // 10)
        assert by_name[u.fqn].stored == codes + 8 * groups, u.fqn
        w = model.get_submodule(u.fqn).weight.detach()
        theirs = layer.dequantize().reshape(w.shape).float()
        assert sqnr_db(w, theirs) >= sqnr_db(w, ours[u.fqn]) - 0.5, u.fqn
    x = torch.arange(16).reshape(1, 16)
    with torch.no_grad():
        assert torch.isfinite(quantized(x).logits).all()


def test_modelopt_compress_stores_the_planned_codes() -> None:
    from bitalloc.backends.export.modelopt import quantize_model

    model = make_tiny_llama(hidden=64, intermediate=128)
    plan = _plan(model, ["int4-g64-sym", "int4-g128-sym", "int8-pc-sym"], "modelopt", seed=2)
    assert not any(f.is_float for f in plan.formats)
    quantized, layers = quantize_model(model, plan)
    assert {lay.name for lay in layers} == {u.fqn for u in plan.space.units}
    x = torch.arange(16).reshape(1, 16)
    with torch.no_grad():
        logits = quantized(x).logits
        handle = BACKENDS.get("rtn").apply(model, plan)
        try:
            ref = model(x).logits
        finally:
            handle.restore()
    for lay, (u, fmt) in zip(layers, zip(plan.space.units, plan.formats)):
        # the same packed codes, one float32 scale per group where bitalloc stores fp16
        assert lay.stored == lay.planned + 2 * fmt.n_groups(u.shape), u.fqn
    assert sqnr_db(ref, logits) > 30  # ModelOpt's max-calibrated grid is bitalloc's min-max one


def test_modelopt_fake_quant_takes_any_symmetric_grid() -> None:
    from bitalloc.backends.export.modelopt import quantize_model

    model = make_tiny_llama(hidden=64, intermediate=128)
    space = SearchSpace.from_model(model, formats=["int3-g32-sym"], tie=None)
    plan = Solution(space=space, choice=("int3-g32-sym",) * len(space), status=Status.FEASIBLE)
    with pytest.raises(ExportViolations, match="ModelOpt export"):
        quantize_model(model, plan)
    quantized, layers = quantize_model(model, plan, compress=False)
    assert layers == []
    ours = fake_quant_weights(model, plan)
    for u in space.units:
        w = quantized.get_submodule(u.fqn)
        fake = w.weight_quantizer(w.weight).detach()
        assert sqnr_db(ours[u.fqn], fake) > 25, u.fqn


def test_hqq_backend_prices_exactly_what_hqq_engine_holds() -> None:
    """The ``hqq`` backend's ``W_hat`` is bit for bit the weight of HQQ's own engine for the
    same plan, and a slice of output channels gets the whole layer's rows."""
    from bitalloc.backends.export.hqq import quantize_model

    model = make_tiny_llama(hidden=64, intermediate=128)
    plan = _plan(model, ["int2-g32", "int3-g64", "int4-g64", "int8-g32"], "hqq", seed=1)
    assert len({f.bits for f in plan.formats}) >= 3
    ours = fake_quant_weights(model, plan, backend="hqq")
    engine, _ = quantize_model(model, plan)
    for u, fmt in zip(plan.space.units, plan.formats):
        theirs = engine.get_submodule(u.fqn).dequantize().reshape(u.shape).float()
        assert torch.equal(ours[u.fqn], theirs), (u.fqn, fmt.key)
    sliced = SearchSpace.from_model(model, ["int3-g32"], channel_group=16, tie=None)
    whole = SearchSpace.from_model(model, ["int3-g32"], tie=None)
    a = BACKENDS.get("hqq").quantized(model, sliced)
    b = BACKENDS.get("hqq").quantized(model, whole)
    w = b.get(whole.index("model.layers.0.mlp.down_proj"), "int3-g32").weight
    for i, u in enumerate(sliced.units):
        if u.fqn == "model.layers.0.mlp.down_proj":
            assert torch.equal(a.get(i, "int3-g32").weight, w[slice(*u.channels)]), u.name
    space = SearchSpace.from_model(model, ["int4-g32-sym"], tie=None)
    with pytest.raises(ValueError, match="the hqq backend builds asymmetric"):
        BACKENDS.get("hqq").apply(
            model, Solution(space, ("int4-g32-sym",) * len(space), Status.FEASIBLE)
        )
