"""Fixtures for bitalloc.data tests: a tiny random Llama and a byte-level tokenizer stand-in."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocab 256); pads with id 0 on the right."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def __call__(
        self,
        texts: Sequence[str],
        padding: bool = True,
        truncation: bool = True,
        return_tensors: str = "pt",
        max_length: int = 64,
    ) -> dict[str, torch.Tensor]:
        rows = [self.encode(t)[:max_length] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def tiny_config():  # noqa: ANN201 - transformers type
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )


@pytest.fixture
def byte_tok() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).eval()


@pytest.fixture
def tiny_encoder() -> torch.nn.Module:
    from transformers import LlamaModel

    torch.manual_seed(0)
    return LlamaModel(tiny_config()).eval()
