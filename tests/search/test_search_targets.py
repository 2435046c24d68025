"""Target menus: each unit is offered only what the runtime stores, and random plans from the
menu export with zero violations; ggml block types count exactly ggml's bytes."""

from __future__ import annotations

import random

import pytest

from bitalloc.backends.export import EXPORTERS
from bitalloc.search.formats import GGML_TYPES, QuantFormat
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace
from bitalloc.search.targets import LLAMACPP_MENU, MARLIN_MENU, get_target


def random_plans(space: SearchSpace, n: int, seed: int = 0):
    rng = random.Random(seed)
    groups = space.tie_groups()
    for _ in range(n):
        choice = [rng.choice(u.allowed) for u in space.units]
        for members in groups.values():
            common = [
                k
                for k in space.units[members[0]].allowed
                if all(k in space.units[i].allowed for i in members)
            ]
            key = rng.choice(common)
            for i in members:
                choice[i] = key
        yield Solution(space=space, choice=tuple(choice), status=Status.FEASIBLE)


def test_ggml_bytes_are_the_block_layouts() -> None:
    import gguf

    for name, t in GGML_TYPES.items():
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
        assert (t.block, t.block_bytes) == (block, size), name
        fmt = QuantFormat.parse(name.upper())
        assert fmt.key == name and QuantFormat.parse(fmt.key) == fmt
        assert fmt.nbytes((6, 2 * t.block)) == 6 * 2 * size
    assert QuantFormat.parse("q4_k").bits_per_weight((576, 1536)) == 4.5  # 144 B / 256


def test_ggml_types_refuse_rows_off_their_block() -> None:
    q4k = QuantFormat.parse("q4_k")
    assert not q4k.supports((576, 576))
    assert "multiple of its block of 256" in q4k.unsupported_reason((576, 576))
    assert QuantFormat.parse("q4_0").supports((576, 576))
    with pytest.raises(ValueError, match="ggml types cannot be sparse"):
        QuantFormat.parse("q4_k-s0.5")
    with pytest.raises(ValueError, match="use QuantFormat.ggml_type"):
        QuantFormat(bits=3, group_size=256, ggml="q4_k")


def test_llamacpp_menu_keeps_k_quants_to_rows_of_256(make_llama) -> None:
    model = make_llama()  # hidden 64, intermediate 128: only 32-block types fit
    space = SearchSpace.from_model(model, target="llama.cpp", tie=None)
    for u in space.units:
        assert all(QuantFormat.parse(k).supports(u.shape) for k in u.allowed)
        assert set(u.allowed) == {"q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q8_0", "fp16"}


def test_llamacpp_plans_export_with_zero_violations(wide_llama) -> None:
    space = SearchSpace.from_model(wide_llama, target="llama.cpp", tie=None)
    by_cols = {u.shape[1]: set(u.allowed) for u in space.units}
    assert {"q2_k", "q4_k", "iq4_xs"} <= by_cols[256] and "q2_k" not in by_cols[544]
    exporter = EXPORTERS.get("llama.cpp")
    for plan in random_plans(space, 30):
        assert exporter.check(plan) == []
        assert exporter.gguf_nbytes(plan) == plan.nbytes


def test_compressed_tensors_plans_export_with_zero_violations(wide_llama) -> None:
    space = SearchSpace.from_model(wide_llama, target="compressed-tensors")
    assert space.tie_groups(), "vLLM fuses q/k/v and gate/up: the target ties them"
    exporter = EXPORTERS.get("compressed-tensors")
    for plan in random_plans(space, 30, seed=1):
        assert exporter.check(plan) == []


@pytest.mark.parametrize(
    ("target", "formats", "match"),
    [
        ("llama.cpp", ["int4-g64"], "llama.cpp stores ggml types"),
        ("compressed-tensors", ["q4_k"], "Marlin kernels serve"),
        ("compressed-tensors", ["int3-g64"], "Marlin kernels serve"),
        ("llama.cpp", ["q4_0-s0.5"], "cannot be sparse"),
    ],
)
def test_target_refuses_formats_it_cannot_store(make_llama, target, formats, match) -> None:
    with pytest.raises(ValueError, match=match):
        SearchSpace.from_model(make_llama(), formats, target=target, tie=None)


def test_unknown_target_and_missing_formats_are_named(make_llama) -> None:
    with pytest.raises(ValueError, match="`target` must be one of llama.cpp, compressed-tensors"):
        get_target("vllm")
    with pytest.raises(ValueError, match="`formats` is required without a `target`"):
        SearchSpace.from_model(make_llama())


def test_menus_are_storable_by_their_own_target() -> None:
    assert get_target("llama.cpp").menu(None) == tuple(QuantFormat.parse(k) for k in LLAMACPP_MENU)
    assert all(QuantFormat.parse(k).bits in (4, 8) for k in MARLIN_MENU)
