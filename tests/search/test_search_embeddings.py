"""An untied embedding table as a searched unit (``embeddings=True``): an ``nn.Embedding`` unit
(:attr:`Unit.embedding`) whose rows are quantized along the embedding dimension, built by the
data-free backends, stored by llama.cpp as ``token_embd.weight`` and refused by every target
that stores no quantized embedding."""

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


def _uniform(space: SearchSpace, key: str) -> Solution:
    return Solution(space=space, choice=(key,) * len(space), status=Status.FEASIBLE)


def test_an_untied_embedding_is_a_unit_of_its_own() -> None:
    model = make_tiny_llama(tie_word_embeddings=False)
    plain = SearchSpace.from_model(model, FORMATS)
    space = SearchSpace.from_model(model, FORMATS, embeddings=True)
    assert space.names == ("model.embed_tokens", *plain.names)  # lm_head stays out
    table = space.units[0]
    assert table.embedding and table.shares is None
    assert table.shape == tuple(model.model.embed_tokens.weight.shape)
    assert set(table.allowed) == set(FORMATS)
    assert not any(u.embedding for u in plain.units)
    assert "embedding" not in plain.units[0].to_dict()  # older plans and caches keep their keys
    assert Unit.from_dict(table.to_dict()) == table
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert searches_embedding(space) and not searches_embedding(plain)
    both = SearchSpace.from_model(model, FORMATS, embeddings=True, lm_head=True)
    assert both.names == (*space.names, "lm_head")


def test_a_tied_table_is_the_lm_head_unit_and_never_searched_twice() -> None:
    model = make_tiny_llama(tie_word_embeddings=True)
    both = SearchSpace.from_model(model, FORMATS, embeddings=True, lm_head=True)
    head = SearchSpace.from_model(model, FORMATS, lm_head=True)
    assert both == head and not any(u.embedding for u in both.units)
    with pytest.raises(ValueError, match="tied to a linear layer .* lm_head=True"):
        SearchSpace.from_model(model, FORMATS, embeddings=True)


def test_the_flags_are_checked() -> None:
    model = make_tiny_llama(tie_word_embeddings=False)
    with pytest.raises(TypeError, match="`embeddings` must be a bool"):
        SearchSpace.from_model(model, FORMATS, embeddings=1)
    with pytest.raises(ValueError, match="`embeddings=True` replaces the default `exclude`"):
        SearchSpace.from_model(model, FORMATS, embeddings=True, exclude=["x"])


def test_rtn_quantizes_the_table_row_by_row_and_restores_it() -> None:
    model = make_tiny_llama(tie_word_embeddings=False)
    space = SearchSpace.from_model(model, ["int4-g32", "int8-pc"], embeddings=True)
    choice = ("int4-g32",) + ("int8-pc",) * (len(space) - 1)
    plan = Solution(space, choice, Status.FEASIBLE)
    before = model.model.embed_tokens.weight.detach().clone()
    ids = torch.arange(16)[None]
    handle = BACKENDS.get("rtn").apply(model, plan)
    emb = model.model.embed_tokens.weight.detach()
    assert not torch.equal(emb, before)
    levels = [torch.unique(g).numel() for g in emb.reshape(-1, 32)]
    assert max(levels) <= 16  # 4-bit codes in every group of 32 along the embedding dim
    err = (emb - before).square().sum() / before.square().sum()
    assert 1e-4 < float(err) < 0.05  # a real 4-bit grid, not a no-op or garbage
    with torch.no_grad():
        model(ids)
    handle.restore()
    assert torch.equal(model.model.embed_tokens.weight, before)


def test_gptq_refuses_the_table_by_name() -> None:
    model = make_tiny_llama(tie_word_embeddings=False)
    space = SearchSpace.from_model(model, ["int4-g32"], embeddings=True)
    with pytest.raises(ValueError, match="'model.embed_tokens' is Embedding"):
        BACKENDS.get("gptq").apply(model, _uniform(space, "int4-g32"), calib=[torch.zeros(1, 4)])


def test_llama_cpp_stores_the_table_as_token_embd() -> None:
    model = make_tiny_llama(tie_word_embeddings=False)
    space = SearchSpace.from_model(model, ["q4_0", "q8_0"], embeddings=True, lm_head=True)
    plan = Solution(space, ("q4_0",) + ("q8_0",) * (len(space) - 1), Status.FEASIBLE)
    exporter = EXPORTERS.get("llama.cpp")
    assert exporter.check(plan) == []
    types = exporter.types(plan)
    assert types["token_embd.weight"] == "Q4_0" and types["output.weight"] == "Q8_0"


@pytest.mark.parametrize(
    "target", ["compressed-tensors", "gptqmodel", "torchao", "hqq", "modelopt"]
)
def test_targets_without_quantized_embeddings_refuse_the_table(target: str) -> None:
    model = make_tiny_llama(tie_word_embeddings=False)
    space = SearchSpace.from_model(model, ["int4-g32", "int8-pc"], embeddings=True)
    exporter = EXPORTERS.get(target)
    bad = [v for v in exporter.check(_uniform(space, "int8-pc")) if v.rule == "embedding"]
    assert [v.unit for v in bad] == ["model.embed_tokens"] and not bad[0].fixable
    with pytest.raises(ValueError, match="cannot fix"):
        exporter.fix(_uniform(space, "int8-pc"))


def test_a_target_without_quantized_embeddings_refuses_them_at_search_time() -> None:
    model = make_tiny_llama(tie_word_embeddings=False, hidden=128, intermediate=256)
    with pytest.raises(ValueError, match="'compressed-tensors' stores no quantized embedding"):
        SearchSpace.from_model(model, target="compressed-tensors", embeddings=True)
    space = SearchSpace.from_model(model, target="llama.cpp", embeddings=True)
    assert space.units[0].embedding and space.units[0].allowed
