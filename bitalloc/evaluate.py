"""Evaluate a plan against the reference model and the closest uniform format.

Causal LMs: perplexity and KL(reference || quantized) per token on held-out windows.
Encoders: embedding fidelity (mean cosine to the reference embeddings) on held-out sentences.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .search.solution import Solution, Status

if TYPE_CHECKING:
    from torch import nn


def closest_uniform(solution: Solution) -> Solution | None:
    """The single format (allowed for every unit) with the largest effective bits that do not
    exceed the plan's; ``None`` when every uniform format is larger."""
    space = solution.space
    best: Solution | None = None
    for fmt in space.formats:
        if not all(fmt.key in u.allowed for u in space.units):
            continue
        cand = Solution(
            space=space,
            choice=(fmt.key,) * len(space),
            status=Status.FEASIBLE,
            meta={"solver": "uniform", "format": fmt.key},
        )
        if cand.nbytes <= solution.nbytes and (best is None or cand.nbytes > best.nbytes):
            best = cand
    return best


def _quantized_copy(
    model: nn.Module, solution: Solution, backend: Any, calib: Any = None
) -> nn.Module:
    from .search.api import apply

    clone = copy.deepcopy(model)
    apply(clone, solution, backend, calib=calib)  # the clone is thrown away with its handle
    return clone


def evaluate_plan(
    model: nn.Module,
    tok: Any,
    solution: Solution,
    *,
    text: str | None = None,
    n_windows: int = 16,
    seq_len: int = 512,
    n_sentences: int = 256,
    backend: Any = None,
    calib: Any = None,
    others: dict[str, Solution] | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score the reference, the plan, the closest uniform format and ``others`` (e.g. anchor
    plans at the plan's bytes), all built by the same backend.

    Args:
        model: the reference model (left untouched; quantized copies are made).
        tok: its tokenizer.
        solution: the plan.
        text: raw text to evaluate on (default: the held-out Wikipedia split for causal LMs,
            held-out sentences for encoders).
        n_windows, seq_len: held-out windows for causal LMs.
        n_sentences: held-out sentences for encoders.
        backend, calib: how every plan is built (default: the backend the plan records,
            :func:`bitalloc.search.api.plan_backend`); give the calibration the plan was
            searched with (the rtn backend searches its grid on it, gptq needs it).
        others: more named plans of the same space to score.

    Returns:
        ``{"reference": {...}, "plan": {...}, "uniform": {...} | None}``; each holds
        ``avg_bits`` and ``ppl``/``kl`` (causal LM) or ``fidelity`` (encoder); ``uniform``
        also holds ``format``.
    """
    from .backends import check_plan
    from .models import task
    from .search.api import plan_backend

    check_plan(model, solution)
    if backend is None:
        backend = plan_backend(solution)
    others = dict(others or {})
    reserved = {"reference", "plan", "uniform"} & set(others)
    if reserved:
        raise ValueError(f"`others` must not use the reserved names {sorted(reserved)}")
    uniform = closest_uniform(solution)
    candidates = {"plan": _quantized_copy(model, solution, backend, calib)}
    if uniform is not None:
        candidates["uniform"] = _quantized_copy(model, uniform, backend, calib)
    for name, other in others.items():
        candidates[name] = _quantized_copy(model, other, backend, calib)
    ref_bits = _reference_bits(model, solution)
    bits = {
        "reference": ref_bits,
        "plan": solution.avg_bits,
        "uniform": uniform.avg_bits if uniform else math.nan,
        **{name: other.avg_bits for name, other in others.items()},
    }
    if task(model) == "causal_lm":
        scores = _lm_scores(model, tok, candidates, text, n_windows, seq_len, callback)
    else:
        scores = _encoder_scores(model, tok, candidates, text, n_sentences)
    out: dict[str, dict[str, Any]] = {}
    for name in ("reference", "plan", "uniform", *others):
        if name not in scores:
            out[name] = None  # type: ignore[assignment]
            continue
        out[name] = {"avg_bits": bits[name], **scores[name]}
    if uniform is not None:
        out["uniform"]["format"] = uniform.choice[0]
    return out


def _reference_bits(model: nn.Module, solution: Solution) -> float:
    modules = dict(model.named_modules())
    w = modules[solution.space.units[0].fqn].weight
    return float(w.element_size() * 8)


def _lm_scores(
    model: nn.Module,
    tok: Any,
    candidates: dict[str, nn.Module],
    text: str | None,
    n_windows: int,
    seq_len: int,
    callback: Any,
) -> dict[str, dict[str, Any]]:
    from .data import evaluate_lm, windows

    win = windows(tok, text if text is not None else "wikipedia-heldout", seq_len, n_windows)
    scores = evaluate_lm(model, candidates, win, callback=callback)
    return {k: {"ppl": s.ppl, "kl": s.kl, "n_tokens": s.n_tokens} for k, s in scores.items()}


def _encoder_scores(
    model: nn.Module,
    tok: Any,
    candidates: dict[str, nn.Module],
    text: str | None,
    n_sentences: int,
) -> dict[str, dict[str, Any]]:
    from .data import embedding_fidelity, sentences

    if text is None:
        sents = sentences("wikipedia-heldout", n_sentences)
    else:
        sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 5]
        sents = sents[:n_sentences]
        if not sents:
            raise ValueError("`text` holds no sentence of at least 5 words to embed")
    out: dict[str, dict[str, Any]] = {"reference": {"fidelity": 1.0, "n_sentences": len(sents)}}
    for name, cand in candidates.items():
        out[name] = {
            "fidelity": embedding_fidelity(model, cand, tok, sents),
            "n_sentences": len(sents),
        }
    return out
