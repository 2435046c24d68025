"""End-to-end loads of the real offline models (slow: run with ``-m slow``)."""

from __future__ import annotations

import time

import pytest
import torch

import bitalloc.data as data
import bitalloc.models as models
from bitalloc.models import smollm2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol() -> tuple[torch.nn.Module, object]:
    return models.load("smollm2-135m")


@pytest.fixture(scope="module")
def minilm() -> tuple[torch.nn.Module, object]:
    return models.load("minilm-l6")


def test_smollm2_structure(smol) -> None:
    model, tok = smol
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert len(model.model.layers) == 30
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 211
    assert next(model.parameters()).dtype == torch.float32
    assert models.task(model) == "causal_lm"
    assert len(tok) == 49152


def test_smollm2_generates_paris(smol) -> None:
    model, tok = smol
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def test_smollm2_second_load_reads_cache(smol) -> None:
    folder = smollm2.cached_folder()
    assert (folder / smollm2.MARKER).is_file()
    assert not list(folder.parent.glob(f".{folder.name}.*"))  # no leftover temp copies
    start = time.perf_counter()
    again, _ = models.load("smollm2-135m", attn_implementation="eager")
    assert time.perf_counter() - start < 5.0
    assert again.config._attn_implementation == "eager"
    assert models.fingerprint(again) == models.fingerprint(smol[0])


def test_smollm2_perplexity_is_sane(smol) -> None:
    model, tok = smol
    w = data.windows(tok, "wikipedia-heldout", seq_len=128, n_windows=2)
    ppl = data.perplexity(model, w)
    assert 5.0 < ppl < 60.0


def test_default_calibration_fits_real_tokenizer(smol) -> None:
    cal = data.calibration(smol[1])
    assert len(cal) == 128 and cal.n_tokens == 128 * 512


def test_minilm(minilm) -> None:
    model, tok = minilm
    assert type(model).__name__ == "BertModel" and models.task(model) == "encoder"
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 37
    sentences = data.sentences("wikipedia-heldout", 16, seed=0)
    assert data.embedding_fidelity(model, model, tok, sentences) == pytest.approx(1.0, abs=1e-6)
    emb = data.embed(
        model,
        tok,
        ["A cat sits on the mat.", "A feline rests on a rug.", "Interest rates rose again."],
    )
    assert emb.shape == (3, 384)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.2
