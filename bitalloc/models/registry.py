"""Model loading by built-in name or local folder, and what kind of model a module is."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

Task = Literal["causal_lm", "encoder"]
_BUILTINS: dict[str, Task] = {"smollm2-135m": "causal_lm", "minilm-l6": "encoder"}
_NAME_ATTR = "bitalloc_name"


def from_pretrained(
    auto_model: Any, folder: Any, dtype: Any, attn_implementation: str | None
) -> tuple[nn.Module, Any]:
    """``auto_model.from_pretrained(folder)`` offline (with ``dtype`` and, when given,
    ``attn_implementation``) and the folder's tokenizer."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = auto_model.from_pretrained(folder, **kwargs)
    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)


def names() -> tuple[str, ...]:
    """Built-in model names accepted by :func:`load`."""
    return tuple(_BUILTINS)


def load(
    name_or_path: str,
    *,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> tuple[nn.Module, Any]:
    """Load a model and its tokenizer, fully offline; the model is in eval mode.

    Args:
        name_or_path: a built-in name (see :func:`names`: ``"smollm2-135m"``, a 30-layer
            Llama causal LM; ``"minilm-l6"``, a 6-layer BERT sentence encoder) or a local
            folder holding a Hugging Face model (loaded as a causal LM when its config is one,
            else with ``AutoModel``).
        dtype: floating dtype of the weights (default ``torch.float32``).
        attn_implementation: passed to transformers (``"eager"`` is needed for double
            backward on CPU; ``None`` keeps the transformers default, ``"sdpa"``).

    Returns:
        ``(model, tokenizer)``.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"`dtype` must be a floating torch.dtype (torch.float32, torch.bfloat16, "
            f"torch.float16), got {dtype!r}"
        )
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"`name_or_path` must be a str, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if name not in _BUILTINS and not os.path.isdir(name):
        raise ValueError(
            f"`name_or_path`={name!r} is neither a built-in model name {list(_BUILTINS)} "
            "nor an existing local model folder"
        )
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
    start = time.perf_counter()
    with _no_progress_bars():
        model, tok = _dispatch(name, kwargs)
    model.eval()
    setattr(model, _NAME_ATTR, name)
    log.info("loaded %s (%s) in %.2f s", name, type(model).__name__, time.perf_counter() - start)
    return model, tok


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' tqdm bars while loading (library code shows no progress bars),
    and the warnings an installed torchao emits when transformers imports it (torch pytree
    deprecations, CUDA-only extension libraries missing on CPU)."""
    noisy = [logging.getLogger(n) for n in ("torch.utils._pytree", "torchao")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)


def _dispatch(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, Any]:
    if name == "smollm2-135m":
        from bitalloc.models import smollm2

        model, tok = smollm2.load(**kwargs)
    elif name == "minilm-l6":
        from bitalloc.models import minilm

        model, tok = minilm.load(**kwargs)
    else:
        from bitalloc.models import local

        model, tok = local.load(name, **kwargs)
    return model, tok


def task(model: nn.Module) -> Task:
    """``"causal_lm"`` when ``model`` predicts next-token logits, ``"encoder"`` when it returns
    hidden states (e.g. a BERT sentence encoder).

    The CLI uses this to pick the quality metric (perplexity/KL or embedding fidelity).
    """
    builtin = _BUILTINS.get(getattr(model, _NAME_ATTR, ""))
    if builtin is not None:
        return builtin
    cls = type(model).__name__
    if cls.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal_lm"
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and can_generate():
        return "causal_lm"
    if getattr(model, "config", None) is not None:
        return "encoder"
    raise ValueError(
        f"cannot tell the task of `model` of type {cls}: expected a Hugging Face causal LM "
        "('causal_lm') or encoder ('encoder')"
    )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a model is: name, task, size. JSON-friendly via :meth:`to_dict`."""

    name: str
    task: Task
    architecture: str
    n_params: int
    n_linear: int
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON serializable)."""
        return asdict(self)


def info(model: nn.Module) -> ModelInfo:
    """Describe ``model``; the name is the built-in name or folder it was loaded from."""
    from torch import nn

    config = getattr(model, "config", None)
    name = getattr(model, _NAME_ATTR, None) or getattr(config, "name_or_path", "") or ""
    params = list(model.parameters())
    return ModelInfo(
        name=str(name) or type(model).__name__,
        task=task(model),
        architecture=type(model).__name__,
        n_params=sum(p.numel() for p in params),
        n_linear=sum(isinstance(m, nn.Linear) for m in model.modules()),
        dtype=str(params[0].dtype).removeprefix("torch.") if params else "none",
    )
