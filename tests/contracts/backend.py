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
# backends that build another family of formats: (menu, dense menu in rising bits, a pair of
# which the tiny model's rows hold only the first)
MENUS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "ggml": (
        ["q4_0", "q5_1", "iq4_nl", "q8_0", "bf16"],
        ["q4_0", "q5_0", "q8_0"],
        ["q4_0", "q4_k"],
    ),
}

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


def menus(backend: Any) -> tuple[list[str], list[str], list[str]]:
    """(formats, dense formats in rising bits, [supported, unsupported]) for ``backend``."""
    return MENUS.get(type(backend).name, (FORMATS, DENSE_INT, ["int4-g32", "int4-g48"]))


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
    def space(self, request: pytest.FixtureRequest, backend: Any, tiny_llama: Any) -> SearchSpace:
        formats = menus(backend)[0]
        return SearchSpace.from_model(tiny_llama, formats, channel_group=request.param, tie=None)

    def test_quantized_source_equals_apply(self, backend, space, tiny_llama, tiny_calib) -> None:
        source = backend.quantized(tiny_llama, space, tiny_calib)
        for key in menus(backend)[0]:
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
        formats = menus(backend)[0]
        space = SearchSpace.from_model(tiny_llama, formats, tie=None)
        choice = tuple(formats[i % len(formats)] for i in range(len(space)))
        plan = Solution(space=space, choice=choice, status=Status.FEASIBLE)
        kl = KLEvaluator(tiny_llama, tiny_calib, space, backend)
        applied = applied_weights(tiny_llama, plan, backend, tiny_calib)
        for i, key in enumerate(choice):
            assert torch.equal(kl.variants.get(i, key), applied[i].to(kl.variants.view(i).dtype))

    def test_apply_then_restore_is_exact(self, backend, space, tiny_llama, tiny_calib) -> None:
        before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
        formats = menus(backend)[0]
        choice = tuple(formats[i % len(formats)] for i in range(len(space)))
        plan = Solution(space=space, choice=choice, status=Status.FEASIBLE)
        handle = backend.apply(tiny_llama, plan, calib=tiny_calib)
        handle.restore()
        after = tiny_llama.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)

    def test_sqnr_rises_with_bits(self, backend, tiny_llama, tiny_calib) -> None:
        dense = menus(backend)[1]
        space = SearchSpace.from_model(tiny_llama, dense, tie=None)
        source = backend.quantized(tiny_llama, space, tiny_calib)
        modules = unit_modules(tiny_llama, space.units)
        for i, u in enumerate(space.units):
            w = unit_weight(modules[u.name], u).detach().float()
            sqnr = []
            for key in dense:
                noise = (source.get(i, key).weight - w).square().sum()
                sqnr.append(float(10 * torch.log10(w.square().sum() / noise)))
            assert sqnr == sorted(sqnr), (u.name, sqnr)

    def test_supports_is_honoured(self, backend, tiny_llama) -> None:
        pair = menus(backend)[2]
        space = SearchSpace.from_model(tiny_llama, pair, tie=None)
        for u in space.units:
            assert backend.supports(u, space.formats[0]) and u.allowed == (pair[0],)
            assert not backend.supports(u, space.formats[1]), (u.name, pair[1])

    def test_refuses_other_format_families(self, backend, tiny_llama) -> None:
        from bitalloc.search.formats import QuantFormat

        other = "int4-g32" if type(backend).name == "ggml" else "q4_0"
        u = SearchSpace.from_model(tiny_llama, [menus(backend)[2][0]], tie=None).units[0]
        assert not backend.supports(u, QuantFormat.parse(other))
