"""Contract every registered backend satisfies; subclass :class:`BackendContract` to run it.

The suite is parametrised over ``BACKENDS.names()`` (plus named option variants), so a newly
registered backend is tested automatically. One source of ``W_hat``: what
``backend.quantized(model, space, calib)`` hands the estimators and the variant cache is what
``apply`` writes, bit for bit; apply then restore is exact; more bits never give a worse SQNR.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from bitalloc.backends import BACKENDS, KLEvaluator
from bitalloc.nn.units import unit_modules, unit_weight
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace
from bitalloc.sensitivity.base import Deltas

FORMATS = ["int2-g32", "int3-g32", "int4-g32", "int8-pc", "bf16"]
DENSE_INT = ["int2-g32", "int3-g32", "int4-g32", "int8-pc"]

# Options under which apply must equal the plan-independent ``quantized`` source (GPTQ's
# sequential apply feeds each block the quantized prefix, so it is compared with
# sequential=False; the sequential default is covered by tests/backends/test_gptq.py).
VARIANTS: dict[str, dict[str, Any]] = {
    "rtn": {},
    "rtn-minmax": {"grid": "minmax"},
    "gptq": {"sequential": False},
    "gptq-minmax": {"sequential": False, "grid": "minmax"},
    "packed": {},
    "packed-gptq": {"quantizer": "gptq", "quantizer_options": {"sequential": False}},
}


def backend_ids() -> list[str]:
    names = set(BACKENDS.names())
    extra = [v for v in VARIANTS if v.split("-")[0] in names and v not in names]
    return sorted(names) + extra


def make_backend(name: str) -> Any:
    base = name.split("-")[0]
    return BACKENDS.get(base, **VARIANTS.get(name, {}))


def uniform_plan(space: SearchSpace, key: str) -> Solution:
    return Solution(space=space, choice=(key,) * len(space), status=Status.FEASIBLE)


def applied_weights(model: Any, plan: Solution, backend: Any, calib: Any) -> list[torch.Tensor]:
    """Every unit's dense weight after ``apply`` (PackedLinear layers dequantized)."""
    from bitalloc.backends.packed_linear import PackedLinear

    clone = copy.deepcopy(model)
    backend.apply(clone, plan, calib=calib)
    mods = dict(clone.named_modules())
    out = []
    for u in plan.space.units:
        mod = mods[u.fqn]
        w = mod.dequantized_weight() if isinstance(mod, PackedLinear) else mod.weight.detach()
        out.append(w if u.channels is None else w[slice(*u.channels)])
    return out


class BackendContract:
    @pytest.fixture(params=backend_ids())
    def backend(self, request: pytest.FixtureRequest) -> Any:
        return make_backend(request.param)

    @pytest.fixture(params=[None, 16], ids=["layers", "channels"])
    def space(self, request: pytest.FixtureRequest, tiny_llama: Any) -> SearchSpace:
        return SearchSpace.from_model(tiny_llama, FORMATS, channel_group=request.param, tie=None)

    def test_quantized_source_equals_apply(self, backend, space, tiny_llama, tiny_calib) -> None:
        source = backend.quantized(tiny_llama, space, tiny_calib)
        for key in FORMATS:
            plan = uniform_plan(space, key)
            applied = applied_weights(tiny_llama, plan, backend, tiny_calib)
            for i, w in enumerate(applied):
                assert torch.equal(source.get(i, key).weight.to(w.dtype), w), (key, i)

    def test_estimator_deltas_equal_apply(self, backend, space, tiny_llama, tiny_calib) -> None:
        deltas = Deltas(tiny_llama, space, tiny_calib, backend)
        modules = unit_modules(tiny_llama, space.units)
        for j, key in enumerate(space.keys):
            applied = applied_weights(tiny_llama, uniform_plan(space, key), backend, tiny_calib)
            for i, u in enumerate(space.units):
                w = unit_weight(modules[u.name], u).detach().float()
                assert torch.equal(deltas.weight(i, j), applied[i].float()), (key, u.name)
                assert torch.equal(deltas(i, j), applied[i].float() - w), (key, u.name)

    def test_variant_cache_equals_apply(self, backend, tiny_llama, tiny_calib) -> None:
        space = SearchSpace.from_model(tiny_llama, FORMATS, tie=None)
        choice = tuple(FORMATS[i % len(FORMATS)] for i in range(len(space)))
        plan = Solution(space=space, choice=choice, status=Status.FEASIBLE)
        kl = KLEvaluator(tiny_llama, tiny_calib, space, backend)
        applied = applied_weights(tiny_llama, plan, backend, tiny_calib)
        for i, key in enumerate(choice):
            assert torch.equal(kl.variants.get(i, key), applied[i].to(kl.variants.view(i).dtype))

    def test_apply_then_restore_is_exact(self, backend, space, tiny_llama, tiny_calib) -> None:
        before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
        choice = tuple(FORMATS[i % len(FORMATS)] for i in range(len(space)))
        plan = Solution(space=space, choice=choice, status=Status.FEASIBLE)
        handle = backend.apply(tiny_llama, plan, calib=tiny_calib)
        handle.restore()
        after = tiny_llama.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)

    def test_sqnr_rises_with_bits(self, backend, tiny_llama, tiny_calib) -> None:
        space = SearchSpace.from_model(tiny_llama, DENSE_INT, tie=None)
        source = backend.quantized(tiny_llama, space, tiny_calib)
        modules = unit_modules(tiny_llama, space.units)
        for i, u in enumerate(space.units):
            w = unit_weight(modules[u.name], u).detach().float()
            sqnr = []
            for key in DENSE_INT:
                noise = (source.get(i, key).weight - w).square().sum()
                sqnr.append(float(10 * torch.log10(w.square().sum() / noise)))
            assert sqnr == sorted(sqnr), (u.name, sqnr)

    def test_supports_is_honoured(self, backend, tiny_llama) -> None:
        space = SearchSpace.from_model(tiny_llama, ["int4-g32", "int4-g48"], tie=None)
        for u in space.units:
            for fmt in space.formats:
                assert backend.supports(u, fmt) == fmt.supports(u.shape)
