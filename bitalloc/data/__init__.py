"""Offline text corpora, calibration/evaluation token windows, and quality metrics.

``import bitalloc.data`` is cheap (numpy only); torch and gensim load when a function runs.

>>> calib = calibration(tok, n_samples=128, seq_len=512)              # doctest: +SKIP
>>> scores = evaluate_lm(model, {"q": qmodel}, windows(tok, "wikipedia-heldout", 512, 8))
...                                                                    # doctest: +SKIP
"""

from __future__ import annotations

from bitalloc.data.corpora import Article, articles, corpus_names, sentences, text
from bitalloc.data.metrics import (
    LMScore,
    embed,
    embedding_fidelity,
    evaluate_lm,
    perplexity,
)
from bitalloc.data.tokens import calibration, encode, next_token_loss, windows

__all__ = [
    "Article",
    "LMScore",
    "articles",
    "calibration",
    "corpus_names",
    "embed",
    "embedding_fidelity",
    "encode",
    "evaluate_lm",
    "next_token_loss",
    "perplexity",
    "sentences",
    "text",
    "windows",
]
