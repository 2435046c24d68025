"""Plans through llama.cpp's own tools: convert, ``llama-quantize`` with bitalloc's tensor-type
file (with and without an imatrix), then read the file back and run ``llama-perplexity``.

The model is a small random Llama with SmolLM2's tokenizer (the converter accepts only
tokenizers it knows): rows of 256 take K-quants, the ffn_down rows of 544 only 32-block types.
Pass: every planned tensor has the planned type and bytes, and decodes bit for bit to the
``W_hat`` of bitalloc's ``ggml`` backend; the imatrix reaches the tool. Needs ``make llama-cpp``
(``make test`` builds it); never skipped.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bitalloc.backends.export import gguf as G
from bitalloc.backends.export.llamacpp import gguf_name
from bitalloc.backends.ggml import GgmlBackend
from bitalloc.search.calibration import Calibration
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def float_model(gguf_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(gguf_llama_dir).eval()
    tok = AutoTokenizer.from_pretrained(gguf_llama_dir)
    return model, tok, G.float_gguf(gguf_llama_dir, gguf_llama_dir / "model-f32.gguf")


def random_plan(space: SearchSpace, seed: int) -> Solution:
    rng = random.Random(seed)
    choice = tuple(rng.choice([k for k in u.allowed if k != "fp16"]) for u in space.units)
    return Solution(space=space, choice=choice, status=Status.FEASIBLE)


def calibration(tok) -> Calibration:
    from bitalloc.data import corpora

    ids = tok(corpora.text("wikipedia-calib")[:20000], return_tensors="pt").input_ids[0]
    return Calibration(
        batches=tuple(ids[i * 128 : (i + 1) * 128][None] for i in range(4)), name="w"
    )


def ggml_source(model, tok, space, imatrix, tmp_path, covered):
    """The ggml backend's weights for ``space`` and, with ``imatrix="on"``, the imatrix file;
    of the two tables only ``covered`` (the one a matmul reads) has an imatrix entry."""
    calib = calibration(tok) if imatrix == "on" else None
    source = GgmlBackend(imatrix=imatrix).quantized(model, space, calib)
    if imatrix != "on":
        return source, None
    values = G.imatrix_of(source.importance, space=space)
    other = ({"token_embd.weight", "output.weight"} - {covered}).pop()
    assert covered in values and other not in values
    return source, G.write_imatrix(values, tmp_path / "imatrix.dat")


def assert_file_holds(plan, path, source) -> None:
    assert G.check_bytes(plan, path) == []
    names = [str(gguf_name(u.tensor_fqn)) for u in plan.space.units]
    stored = G.stored_weights(path, names)
    for i, (u, key, name) in enumerate(zip(plan.space.units, plan.choice, names)):
        assert np.array_equal(source.get(i, key).weight.numpy(), stored[name]), (u.name, key)


def test_llama_quantize_stores_exactly_the_plan(float_model, tmp_path) -> None:
    model, _, f32 = float_model
    space = SearchSpace.from_model(model, target="llama.cpp", tie=None)
    plan = random_plan(space, seed=0)
    out = G.quantize(plan, f32, tmp_path / "plan.gguf")
    assert_file_holds(plan, out, GgmlBackend(imatrix="off").quantized(model, space))
    held = G.tensors(out)
    assert held["token_embd.weight"].type == "Q8_0"  # outside the plan: the default type
    assert sum(t.nbytes for n, t in held.items() if n.endswith("norm.weight")) == 4 * 256 * 5
    assert G.planned_bytes(plan) == plan.nbytes


def test_the_imatrix_reaches_llama_quantize(float_model, tmp_path) -> None:
    model, tok, f32 = float_model
    space = SearchSpace.from_model(model, target="llama.cpp", tie=None)
    plan = random_plan(space, seed=1)
    source = GgmlBackend(imatrix="on").quantized(model, space, calibration(tok))
    imatrix = G.write_imatrix(G.imatrix_of(source.importance), tmp_path / "imatrix.dat")
    out = G.quantize(plan, f32, tmp_path / "plan-imatrix.gguf", imatrix=imatrix)
    assert_file_holds(plan, out, source)
    plain = GgmlBackend(imatrix="off").quantized(model, space)
    differ = [
        i
        for i, k in enumerate(plan.choice)
        if k != "q8_0" and not torch.equal(plain.get(i, k).weight, source.get(i, k).weight)
    ]
    assert differ, "the importance matrix changed no tensor"


@pytest.mark.parametrize("imatrix", ["off", "on"])
def test_a_searched_tied_embedding_is_the_files_token_embd(float_model, tmp_path, imatrix) -> None:
    """``lm_head=True`` on a tied model: the lm_head unit is ``token_embd.weight``, which takes
    the plan's type and decodes bit for bit to the backend's ``W_hat`` (with the lm_head input's
    ``E[x^2]`` as its imatrix entry); the whole file is the predicted size."""
    from bitalloc.backends.export.gguf_file import predicted_file_bytes

    model, tok, f32 = float_model
    space = SearchSpace.from_model(model, target="llama.cpp", tie=None, lm_head=True)
    head = space.units[-1]
    assert (head.name, head.shares) == ("lm_head", "model.embed_tokens")
    source, path = ggml_source(model, tok, space, imatrix, tmp_path, "token_embd.weight")
    plan = random_plan(space, seed=3)
    plan = Solution(space, plan.choice[:-1] + ("q5_0",), Status.FEASIBLE)
    out = G.quantize(plan, f32, tmp_path / "tied.gguf", imatrix=path)
    assert_file_holds(plan, out, source)
    held = G.tensors(out)
    assert held["token_embd.weight"].type == "Q5_0" and "output.weight" not in held
    assert predicted_file_bytes(plan, f32, imatrix=path) == G.file_bytes(out)
    with pytest.raises(ValueError, match="searches the token embedding"):
        G.quantize(plan, f32, tmp_path / "x.gguf", embedding_type="q8_0")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("imatrix", ["off", "on"])
def test_a_searched_untied_embedding_is_the_files_token_embd(
    gguf_untied_llama_dir, tmp_path, imatrix
) -> None:
    """``embeddings=True`` on an untied model: ``model.embed_tokens`` (an ``nn.Embedding``) is a
    unit of its own, stored as ``token_embd.weight`` at the plan's type, bit for bit the
    backend's ``W_hat``; ``lm_head`` is ``output.weight``. The embedding has no matmul input, so
    the imatrix holds no entry for it (as ``llama-imatrix``'s), and the file is the predicted
    size."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from bitalloc.backends.export.gguf_file import predicted_file_bytes

    folder = gguf_untied_llama_dir
    model = LlamaForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    f32 = G.float_gguf(folder, tmp_path / "model-f32.gguf")
    space = SearchSpace.from_model(
        model, target="llama.cpp", tie=None, lm_head=True, embeddings=True
    )
    table = space.units[space.index("model.embed_tokens")]
    assert table.embedding and table.shares is None and space.units[-1].name == "lm_head"
    source, path = ggml_source(model, tok, space, imatrix, tmp_path, "output.weight")
    plan = random_plan(space, seed=5)
    choice = list(plan.choice)
    choice[space.index("model.embed_tokens")], choice[-1] = "q3_k", "q6_k"
    plan = Solution(space, tuple(choice), Status.FEASIBLE)
    out = G.quantize(plan, f32, tmp_path / "untied.gguf", imatrix=path)
    assert_file_holds(plan, out, source)
    held = G.tensors(out)
    assert (held["token_embd.weight"].type, held["output.weight"].type) == ("Q3_K", "Q6_K")
    assert predicted_file_bytes(plan, f32, imatrix=path) == G.file_bytes(out)


def test_llama_perplexity_ranks_plans_by_bits(float_model, tmp_path) -> None:
    from bitalloc.data import corpora

    model, _, f32 = float_model
    text = tmp_path / "lee.txt"
    text.write_text(corpora.text("lee")[:12000])
    base = G.kl_base(f32, text, tmp_path / "base.kld", ctx=128, chunks=4)
    space = SearchSpace.from_model(model, target="llama.cpp", tie=None)
    kld = {}
    for key in ("q8_0", "q4_0"):
        plan = Solution(space=space, choice=(key,) * len(space), status=Status.FEASIBLE)
        out = G.quantize(plan, f32, tmp_path / f"{key}.gguf")
        kld[key] = G.kl_divergence(out, base, ctx=128)
    assert kld["q8_0"].chunks == 4 and kld["q8_0"].mean_kld < kld["q4_0"].mean_kld
    assert np.isfinite(kld["q4_0"].ppl) and kld["q8_0"].ppl_base == kld["q4_0"].ppl_base


def test_plans_breaking_the_runtime_rules_are_refused_before_the_tool_runs(
    float_model, tmp_path
) -> None:
    from bitalloc.backends.export.base import ExportViolations

    model, _, f32 = float_model
    space = SearchSpace.from_model(model, ["int3-g32"], tie=None)
    plan = Solution(space=space, choice=("int3-g32",) * len(space), status=Status.FEASIBLE)
    with pytest.raises(ExportViolations, match="mlp.down_proj"):
        G.quantize(plan, f32, tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()
    with pytest.raises(ValueError, match="`source` GGUF not found"):
        G.quantize(plan, tmp_path / "missing.gguf", tmp_path / "x.gguf")
