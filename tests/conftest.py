"""Shared fixtures: a tiny random Llama, calibration batches, a local model folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_VOCAB = 320


def make_tiny_llama(
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    intermediate: int = 128,
    vocab: int = TINY_VOCAB,
    **config,
):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **config,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def wide_llama():
    """Rows of 256 (llama.cpp's K-quants fit) and ffn_down rows of 544 (32-block types only)."""
    return make_tiny_llama(hidden=256, intermediate=544)


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def make_llama():
    """Factory ``make_llama(seed=0, layers=2)`` for tests that need several models."""
    return make_tiny_llama


@pytest.fixture
def tiny_calib():
    import torch

    from bitalloc.search.calibration import Calibration

    gen = torch.Generator().manual_seed(1)
    return Calibration(
        batches=tuple(torch.randint(0, TINY_VOCAB, (1, 32), generator=gen) for _ in range(4)),
        name="random-tokens",
    )


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from bitalloc.data import text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([text("wikipedia-calib")[:200_000]], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A local Hugging Face folder (random tiny Llama + a byte-level BPE tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama().save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)
    return folder


def _gguf_llama(folder: Path, tied: bool) -> Path:
    from transformers import AutoTokenizer

    from bitalloc.models.smollm2 import cached_folder

    tok = AutoTokenizer.from_pretrained(cached_folder())
    model = make_tiny_llama(
        hidden=256,
        intermediate=544,
        vocab=len(tok),
        tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def gguf_llama_dir(tmp_path_factory) -> Path:
    """A Hugging Face folder llama.cpp's converter accepts: a random Llama with SmolLM2's
    tokenizer, rows of 256 (K-quants fit) and ffn_down rows of 544 (32-block types only), its
    lm_head tied to the token embedding (as SmolLM2's)."""
    return _gguf_llama(tmp_path_factory.mktemp("gguf-llama"), tied=True)


@pytest.fixture(scope="session")
def gguf_untied_llama_dir(tmp_path_factory) -> Path:
    """:func:`gguf_llama_dir` with a separate lm_head (GGUF ``output.weight``)."""
    return _gguf_llama(tmp_path_factory.mktemp("gguf-untied-llama"), tied=False)
