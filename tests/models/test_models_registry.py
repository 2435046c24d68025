"""Model registry, local folders, task detection, fingerprints (fast: tiny random models)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

import bitalloc.models as models


def test_names() -> None:
    assert models.names() == ("smollm2-135m", "minilm-l6")


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"`name_or_path`='gpt-5'.*smollm2-135m"):
        models.load("gpt-5")


def test_bad_dtype() -> None:
    with pytest.raises(ValueError, match="`dtype` must be a floating torch.dtype"):
        models.load("smollm2-135m", dtype=torch.int8)


def test_load_local_causal_lm(llama_folder, tiny_llama) -> None:
    model, tok = models.load(str(llama_folder), attn_implementation="eager")
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config._attn_implementation == "eager"
    assert models.task(model) == "causal_lm"
    assert models.fingerprint(model) == models.fingerprint(tiny_llama)
    assert tok.encode("hello world", add_special_tokens=False) == [2, 3]
    info = models.info(model)
    assert info.name == str(llama_folder) and info.n_linear == 15 and info.dtype == "float32"
    assert info.to_dict()["task"] == "causal_lm"


def test_load_local_bf16(llama_folder) -> None:
    model, _ = models.load(llama_folder, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_load_local_encoder(bert_folder) -> None:
    model, _ = models.load(str(bert_folder))
    assert type(model).__name__ == "BertModel"
    assert models.task(model) == "encoder"


def test_folder_without_config(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        models.load(str(tmp_path))


def test_task_of_plain_module() -> None:
    with pytest.raises(ValueError, match="cannot tell the task of `model`"):
        models.task(torch.nn.Linear(2, 2))


def test_fingerprint_tracks_weights(tiny_llama) -> None:
    fp = models.fingerprint(tiny_llama)
    assert len(fp) == 16 and fp == models.fingerprint(copy.deepcopy(tiny_llama))
    other = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight[3, 7] += 1e-3
    assert models.fingerprint(other) != fp
    assert models.fingerprint(tiny_llama.to(torch.bfloat16)) != fp
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        models.fingerprint("model")  # type: ignore[arg-type]


def test_cache_dir_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("BITALLOC_CACHE_DIR", str(tmp_path))
    assert models.cache_dir("models", "x") == tmp_path / "models" / "x"
    monkeypatch.delenv("BITALLOC_CACHE_DIR")
    assert str(models.cache_dir()).endswith(".cache/bitalloc")


def test_import_is_cheap() -> None:
    code = (
        "import sys, bitalloc.models, bitalloc.data; "
        "print([m for m in ('torch', 'transformers', 'gensim', 'gguf') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
