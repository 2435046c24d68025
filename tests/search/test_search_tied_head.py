"""A tied ``lm_head`` as a searched unit (``lm_head=True``): one unit for the one tensor the
token embedding and the output projection share, named after lm_head, stored as the
embedding's tensor; quantizing it quantizes the embedding, and only targets that store the
tensor once accept it."""

from __future__ import annotations

import pytest
import torch

from bitalloc.backends import BACKENDS
from bitalloc.backends.export import EXPORTERS
from bitalloc.backends.export.gguf_file import searches_embedding
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace, Unit
from tests.conftest import make_tiny_llama

FORMATS = ["int4-g32", "int8-pc", "q4_0", "q8_0"]


def test_the_tied_head_is_one_unit_that_shares_the_embedding() -> None:
    model = make_tiny_llama(tie_word_embeddings=True)
    plain = SearchSpace.from_model(model, FORMATS)
    space = SearchSpace.from_model(model, FORMATS, lm_head=True)
    assert space.names == (*plain.names, "lm_head")
    head = space.units[-1]
    assert head.shares == "model.embed_tokens" and head.tensor_fqn == "model.embed_tokens"
    assert head.fqn == "lm_head" and head.shape == tuple(model.lm_head.weight.shape)
    assert all(u.shares is None for u in plain.units)
    assert "shares" not in plain.units[0].to_dict()  # older plans and caches keep their keys
    assert Unit.from_dict(head.to_dict()) == head
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert searches_embedding(space) and not searches_embedding(plain)


def test_an_untied_head_is_its_own_tensor() -> None:
    model = make_tiny_llama(tie_word_embeddings=False)
    space = SearchSpace.from_model(model, FORMATS, lm_head=True)
    head = space.units[-1]
    assert head.name == "lm_head" and head.shares is None
    assert not searches_embedding(space)
    types = EXPORTERS.get("llama.cpp").types(_uniform(space, "q8_0"))
    assert "output.weight" in types and "token_embd.weight" not in types


def test_a_second_module_on_a_searched_tensor_is_not_searched_twice() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 32))
    model[1].weight = model[0].weight
    space = SearchSpace.from_model(model, ["int4-g32"], exclude=())
    assert space.names == ("0",)


def test_lm_head_and_exclude_are_one_choice() -> None:
    model = make_tiny_llama(tie_word_embeddings=True)
    with pytest.raises(ValueError, match="`lm_head=True` replaces the default `exclude`"):
        SearchSpace.from_model(model, FORMATS, lm_head=True, exclude=["x"])
    with pytest.raises(TypeError, match="`lm_head` must be a bool"):
        SearchSpace.from_model(model, FORMATS, lm_head="yes")


def test_applying_the_head_quantizes_the_embedding_and_restores_both() -> None:
    model = make_tiny_llama(tie_word_embeddings=True)
    space = SearchSpace.from_model(model, ["int4-g32", "int8-pc"], lm_head=True)
    plan = _uniform(space, "int8-pc")
    plan = Solution(space, plan.choice[:-1] + ("int4-g32",), Status.FEASIBLE)
    before = model.model.embed_tokens.weight.detach().clone()
    handle = BACKENDS.get("rtn").apply(model, plan)
    emb = model.model.embed_tokens.weight
    assert emb is model.lm_head.weight and not torch.equal(emb, before)
    levels = [torch.unique(row).numel() for row in emb.detach().reshape(-1, 32)[:64]]
    assert max(levels) <= 16  # 4-bit codes in every group of 32
    handle.restore()
    assert torch.equal(model.model.embed_tokens.weight, before)


@pytest.mark.parametrize(
    "target", ["compressed-tensors", "gptqmodel", "torchao", "hqq", "modelopt"]
)
def test_targets_that_quantize_lm_head_apart_refuse_a_tied_one(target: str) -> None:
    model = make_tiny_llama(tie_word_embeddings=True)
    space = SearchSpace.from_model(model, ["int4-g32", "int8-pc"], lm_head=True)
    plan = _uniform(space, "int8-pc")
    exporter = EXPORTERS.get(target)
    bad = [v for v in exporter.check(plan) if v.rule == "tied"]
    assert [v.unit for v in bad] == ["lm_head"] and not bad[0].fixable
    assert "model.embed_tokens" in bad[0].message
    with pytest.raises(ValueError, match="cannot fix"):
        exporter.fix(plan)


def test_llama_cpp_stores_the_tied_head_as_token_embd() -> None:
    model = make_tiny_llama(tie_word_embeddings=True)
    space = SearchSpace.from_model(model, ["q4_0", "q8_0"], lm_head=True)
    plan = _uniform(space, "q8_0")
    exporter = EXPORTERS.get("llama.cpp")
    assert exporter.check(plan) == []
    types = exporter.types(plan)
    assert types["token_embd.weight"] == "Q8_0" and "output.weight" not in types
    assert "token_embd" in exporter.render(plan)


def _uniform(space: SearchSpace, key: str) -> Solution:
    return Solution(space=space, choice=(key,) * len(space), status=Status.FEASIBLE)


def test_a_target_that_cannot_store_the_tie_refuses_the_head_at_search_time() -> None:
    model = make_tiny_llama(tie_word_embeddings=True, hidden=128, intermediate=256)
    with pytest.raises(ValueError, match="'compressed-tensors' would quantize lm_head apart"):
        SearchSpace.from_model(model, target="compressed-tensors", lm_head=True)
    untied = make_tiny_llama(tie_word_embeddings=False, hidden=128, intermediate=256)
    space = SearchSpace.from_model(untied, target="compressed-tensors", lm_head=True)
    assert space.units[-1].name == "lm_head"
