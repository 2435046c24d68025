"""Any Hugging Face model saved in a local folder (``save_pretrained`` layout)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def _is_causal_lm(config: Any) -> bool:
    """Whether a config describes a causal LM: by its saved ``architectures`` when present
    (a ``BertModel`` encoder folder stays an encoder), else by the causal-LM auto mapping."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    archs = getattr(config, "architectures", None) or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING


def load(
    folder: str, *, dtype: torch.dtype, attn_implementation: str | None = None
) -> tuple[nn.Module, Any]:
    """Load ``folder`` as a causal LM, or with ``AutoModel`` when its config is not one.

    Nothing is fetched from the Hugging Face Hub (``local_files_only=True``) and only
    safetensors weights are read: a pickle checkpoint is refused, never executed.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"`name_or_path`={folder!r} is a folder but not a Hugging Face model folder "
            f"(no readable config.json): {exc}"
        ) from exc
    from pathlib import Path

    if not any(Path(folder).glob("*.safetensors")):
        raise ValueError(
            f"`name_or_path`={folder!r} holds no *.safetensors weights; bitalloc loads "
            "safetensors only and never unpickles *.bin/*.pt files (convert them first)"
        )
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True, "use_safetensors": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    auto = AutoModelForCausalLM if _is_causal_lm(config) else AutoModel
    model = auto.from_pretrained(folder, config=config, **kwargs)
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"`name_or_path`={folder!r} has no usable tokenizer files: {exc}"
        ) from exc
    return model, tok
