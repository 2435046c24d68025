"""Quality metrics: perplexity and KL divergence for causal LMs, embedding fidelity for encoders.

Definitions (windows ``x`` of ``T`` tokens, ``N = n_windows * (T - 1)`` predicted positions):

- ``nll = -(1/N) * sum_t log p(x_{t+1} | x_<=t)`` and ``ppl = exp(nll)``;
- ``kl = (1/N) * sum_t KL(p_ref(.|x_<=t) || p_cand(.|x_<=t))`` in nats, from ``log_softmax``
  of float32 logits;
- embedding fidelity: the mean cosine between reference and candidate sentence embeddings
  (attention-mask-weighted mean of the last hidden states, L2-normalized).

Sums are accumulated in float64; only one batch of logits is alive at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..nn.modes import eval_mode

if TYPE_CHECKING:
    import torch
    from torch import nn

REFERENCE = "reference"


@dataclass(frozen=True, slots=True)
class LMScore:
    """Causal-LM quality on a set of windows: perplexity, KL to the reference (nats/token),
    mean next-token NLL (nats) and the number of predicted tokens."""

    ppl: float
    kl: float
    nll: float
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON serializable)."""
        return asdict(self)


def _check_module(argument: str, model: Any) -> None:
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"`{argument}` must be a torch.nn.Module, got {type(model).__name__}")


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}")
    return batch_size


def _device(model: nn.Module) -> torch.device:
    import torch

    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    kwargs: dict[str, Any] = {"use_cache": False} if hasattr(model, "config") else {}
    out = model(input_ids=ids.to(_device(model)), **kwargs)  # HF models: no KV cache
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out


def _log_probs(model: nn.Module, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 log-probabilities of the next token, ``[B, T-1, V]``."""
    import torch

    logits = _logits(model, ids)[:, :-1].to(device=device, dtype=torch.float32)
    return torch.log_softmax(logits, dim=-1)


def _check_windows(windows: Any) -> torch.Tensor:
    import torch

    if not isinstance(windows, torch.Tensor) or windows.dim() != 2:
        raise ValueError(
            "`windows` must be a 2-D integer tensor [n_windows, seq_len], got "
            f"{type(windows).__name__} with shape {tuple(getattr(windows, 'shape', ()))}"
        )
    if windows.dtype.is_floating_point or windows.dtype == torch.bool or windows.is_complex():
        raise ValueError(f"`windows` must hold integer token ids, got dtype {windows.dtype}")
    if windows.shape[0] < 1 or windows.shape[1] < 2:
        raise ValueError(
            f"`windows` needs >= 1 window of >= 2 tokens, got shape {tuple(windows.shape)}"
        )
    return windows.long()


def evaluate_lm(
    reference: nn.Module,
    candidates: Mapping[str, nn.Module],
    windows: torch.Tensor,
    *,
    batch_size: int = 1,
    callback: Callable[[int, int], None] | None = None,
) -> dict[str, LMScore]:
    """Perplexity of ``reference`` and each candidate, and each candidate's KL to the reference.

    One pass over ``windows``: per batch the reference runs once and every candidate once,
    under ``torch.no_grad`` and in eval mode (training flags are restored afterwards).

    Args:
        reference: the causal LM everything is compared with.
        candidates: name -> causal LM (e.g. quantized copies); may be empty. The name
            ``"reference"`` is reserved.
        windows: token ids ``[n_windows, seq_len]`` (see :func:`bitalloc.data.windows`).
        batch_size: windows per forward pass.
        callback: ``callback(windows_done, n_windows)`` after every batch, for progress.

    Returns:
        ``{"reference": LMScore(kl=0), name: LMScore, ...}`` in that order.
    """
    import torch
    import torch.nn.functional as F

    _check_module("reference", reference)
    if not isinstance(candidates, Mapping):
        raise TypeError(
            f"`candidates` must be a mapping name -> nn.Module, got {type(candidates).__name__}"
        )
    if REFERENCE in candidates:
        raise ValueError(f"`candidates` must not use the reserved name {REFERENCE!r}")
    for name, model in candidates.items():
        _check_module(f"candidates[{name!r}]", model)
    windows = _check_windows(windows)
    batch_size = _check_batch_size(batch_size)
    names = [REFERENCE, *candidates]
    nll = dict.fromkeys(names, 0.0)
    kl = dict.fromkeys(names, 0.0)
    n_windows = windows.shape[0]
    device = _device(reference)
    with torch.no_grad(), eval_mode(reference, *candidates.values()):
        for start in range(0, n_windows, batch_size):
            batch = windows[start : start + batch_size]
            targets = batch[:, 1:].to(device).unsqueeze(-1)
            ref = _log_probs(reference, batch, device)
            nll[REFERENCE] -= float(ref.gather(-1, targets).sum(dtype=torch.float64))
            for name, model in candidates.items():
                cand = _log_probs(model, batch, device)
                nll[name] -= float(cand.gather(-1, targets).sum(dtype=torch.float64))
                kl[name] += float(
                    F.kl_div(cand, ref, log_target=True, reduction="none").sum(dtype=torch.float64)
                )
                del cand
            del ref
            if callback is not None:
                callback(min(start + batch_size, n_windows), n_windows)
    n_tokens = n_windows * (windows.shape[1] - 1)
    return {
        # KL >= 0 in exact arithmetic; clamp float rounding of identical distributions.
        name: LMScore(
            ppl=math.exp(nll[name] / n_tokens),
            kl=max(kl[name] / n_tokens, 0.0),
            nll=nll[name] / n_tokens,
            n_tokens=n_tokens,
        )
        for name in names
    }


def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 1,
    callback: Callable[[int, int], None] | None = None,
) -> float:
    """``exp`` of the mean next-token NLL of ``model`` over ``windows`` (:func:`evaluate_lm`)."""
    scores = evaluate_lm(model, {}, windows, batch_size=batch_size, callback=callback)
    return scores[REFERENCE].ppl


def _check_sentences(sentences: Any) -> list[str]:
    if isinstance(sentences, str) or not isinstance(sentences, Sequence) or not sentences:
        raise ValueError("`sentences` must be a non-empty list of strings")
    if not all(isinstance(s, str) for s in sentences):
        raise ValueError("`sentences` must be a non-empty list of strings")
    return list(sentences)


def embed(
    model: nn.Module, tok: Any, sentences: Sequence[str], *, batch_size: int = 32
) -> torch.Tensor:
    """Sentence embeddings ``[n, hidden]``: mask-weighted mean of the last hidden state, L2-normed.

    ``tok(batch, padding=True, truncation=True, return_tensors="pt")`` must return
    ``input_ids`` and ``attention_mask``; the model receives only those two.
    """
    import torch
    import torch.nn.functional as F

    _check_module("model", model)
    sentences = _check_sentences(sentences)
    batch_size = _check_batch_size(batch_size)
    device = _device(model)
    chunks = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(sentences), batch_size):
            enc = tok(
                sentences[start : start + batch_size],
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            ids = enc["input_ids"].to(device)
            mask = enc["attention_mask"].to(device)
            out = model(input_ids=ids, attention_mask=mask)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            weights = mask.unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            chunks.append(F.normalize(pooled, p=2, dim=1).cpu())
    return torch.cat(chunks)


def embedding_fidelity(
    reference: nn.Module,
    candidate: nn.Module,
    tok: Any,
    sentences: Sequence[str],
    *,
    batch_size: int = 32,
) -> float:
    """Mean cosine similarity between reference and candidate sentence embeddings (1 = same).

    ``sentences`` should be held-out text, e.g. ``bitalloc.data.sentences("wikipedia-heldout",
    256, seed=0)``. Embeddings are computed with :func:`embed`.
    """
    ref = embed(reference, tok, sentences, batch_size=batch_size)
    cand = embed(candidate, tok, sentences, batch_size=batch_size)
    return float((ref.double() * cand.double()).sum(dim=1).mean())
