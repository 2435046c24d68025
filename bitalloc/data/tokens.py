"""Token windows over a corpus: random calibration windows and evenly spread evaluation windows.

A tokenizer is anything with ``encode(text, add_special_tokens=False) -> list[int]`` (every
Hugging Face tokenizer); fast tokenizers are driven through their Rust backend, which skips
the "sequence longer than the model maximum" warning. No special tokens are added: a window
is a plain slice of the corpus' token stream.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from bitalloc.data.corpora import corpus_names, text
from bitalloc.search.calibration import Calibration

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_ENCODED: weakref.WeakKeyDictionary[Any, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()
_MAX_CACHED_TEXTS = 4


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return int(value)


def resolve_text(text_or_name: str, argument: str = "text_or_name") -> tuple[str, str]:
    """Return ``(text, label)``: a corpus name's text, or ``text_or_name`` itself as raw text.

    A string without whitespace that is not a corpus name is rejected (probably a typo).
    """
    if not isinstance(text_or_name, str):
        raise TypeError(f"`{argument}` must be a str, got {type(text_or_name).__name__}")
    if text_or_name in corpus_names():
        return text(text_or_name), text_or_name
    if not any(c.isspace() for c in text_or_name):
        raise ValueError(
            f"`{argument}`={text_or_name[:60]!r} is not a corpus name {list(corpus_names())} "
            "and does not look like text"
        )
    digest = hashlib.sha256(text_or_name.encode("utf-8")).hexdigest()[:8]
    return text_or_name, f"text-{digest}"


def encode(tok: Any, text_: str) -> np.ndarray:
    """Token ids of ``text_`` as an int64 array (memoized per tokenizer for a few texts)."""
    key = hashlib.sha256(text_.encode("utf-8")).hexdigest()
    try:
        per_tok = _ENCODED.setdefault(tok, {})
    except TypeError:  # tokenizer not weak-referenceable or not hashable
        per_tok = {}
    if key not in per_tok:
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:
            if backend.truncation is not None or backend.padding is not None:
                # e.g. MiniLM ships truncation at 128 tokens: encode the corpus whole
                from tokenizers import Tokenizer

                backend = Tokenizer.from_str(backend.to_str())
                backend.no_truncation()
                backend.no_padding()
            ids = backend.encode(text_, add_special_tokens=False).ids
        else:
            ids = tok.encode(text_, add_special_tokens=False)
        if len(per_tok) >= _MAX_CACHED_TEXTS:
            per_tok.pop(next(iter(per_tok)))
        per_tok[key] = np.asarray(ids, dtype=np.int64)
    return per_tok[key]


def _too_short(label: str, n_tokens: int, need: int, what: str) -> ValueError:
    return ValueError(
        f"corpus {label!r} has {n_tokens} tokens, fewer than the {need} needed for {what}"
    )


def windows(
    tok: Any, text_or_name: str, seq_len: int = 512, n_windows: int | None = None
) -> torch.Tensor:
    """Non-overlapping ``seq_len``-token windows spread evenly over a text, ``[n, seq_len]``.

    The token stream holds ``m = n_tokens // seq_len`` aligned slots ``[i*seq_len,
    (i+1)*seq_len)``; ``n_windows=None`` returns all ``m``, otherwise slots
    ``floor(j*m/n_windows)`` for ``j < n_windows`` (distinct, evenly spread).

    Args:
        tok: tokenizer.
        text_or_name: a corpus name (:func:`bitalloc.data.corpus_names`) or raw text.
        seq_len: tokens per window (>= 2).
        n_windows: how many windows (>= 1), or ``None`` for all.
    """
    import torch

    seq_len = _check_int("seq_len", seq_len, 2)
    if n_windows is not None:
        n_windows = _check_int("n_windows", n_windows, 1)
    body, label = resolve_text(text_or_name)
    ids = encode(tok, body)
    slots = len(ids) // seq_len
    if slots == 0:
        raise ValueError(
            f"`text_or_name` ({label}) has {len(ids)} tokens, shorter than one window of "
            f"`seq_len`={seq_len}"
        )
    n = slots if n_windows is None else n_windows
    if n > slots:
        raise ValueError(
            f"`n_windows`={n} exceeds the {slots} windows of {seq_len} tokens in {label!r} "
            f"({len(ids)} tokens)"
        )
    starts = (np.arange(n, dtype=np.int64) * slots // n) * seq_len
    out = np.stack([ids[s : s + seq_len] for s in starts])
    return torch.from_numpy(out)


def random_starts(n_tokens: int, n: int, seq_len: int, seed: int) -> np.ndarray:
    """Start offsets of ``n`` random non-overlapping windows in a stream of ``n_tokens``.

    The free tokens ``n_tokens - n*seq_len`` are split into ``n + 1`` random gaps (sorted
    uniform draws), so windows may start anywhere, never overlap, and are returned in a
    seeded random order.
    """
    rng = np.random.default_rng(seed)
    slack = n_tokens - n * seq_len
    if slack < 0:
        raise ValueError(f"{n} windows of {seq_len} tokens do not fit in {n_tokens} tokens")
    gaps = np.sort(rng.integers(0, slack + 1, size=n))
    starts = np.arange(n, dtype=np.int64) * seq_len + gaps
    return starts[rng.permutation(n)]


def next_token_loss(output: Any, batch: Any) -> torch.Tensor:
    """Mean next-token cross-entropy (float32) of a causal LM output on ``batch`` token ids."""
    import torch.nn.functional as F

    logits = output.logits if hasattr(output, "logits") else output
    ids = batch["input_ids"] if isinstance(batch, Mapping) else batch
    pred = logits[:, :-1].float()
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), ids[:, 1:].reshape(-1))


def calibration(
    tok: Any,
    n_samples: int = 128,
    seq_len: int = 512,
    *,
    corpus: str = "wikipedia-calib",
    batch_size: int = 1,
    seed: int = 0,
) -> Calibration:
    """Random non-overlapping token windows of a corpus as a :class:`Calibration`.

    The corpus is tokenized once; ``n_samples`` windows of ``seq_len`` tokens are drawn with
    ``numpy.random.default_rng(seed)`` (see :func:`random_starts`) and grouped into
    ``torch.long`` batches ``[batch_size, seq_len]`` (the last one smaller when
    ``batch_size`` does not divide ``n_samples``). ``loss`` is :func:`next_token_loss`.

    Args:
        tok: tokenizer.
        n_samples: number of windows (>= 1).
        seq_len: tokens per window (>= 2).
        corpus: a corpus name (default the Wikipedia calibration split) or raw text.
        batch_size: windows per batch (>= 1).
        seed: random seed; same seed, same batches.
    """
    import torch

    n_samples = _check_int("n_samples", n_samples, 1)
    seq_len = _check_int("seq_len", seq_len, 2)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    body, label = resolve_text(corpus, "corpus")
    ids = encode(tok, body)
    if len(ids) < n_samples * seq_len:
        raise _too_short(
            label,
            len(ids),
            n_samples * seq_len,
            f"`n_samples`={n_samples} windows of `seq_len`={seq_len}",
        )
    starts = random_starts(len(ids), n_samples, seq_len, seed)
    rows = torch.from_numpy(np.stack([ids[s : s + seq_len] for s in starts]))
    batches = tuple(rows[i : i + batch_size].clone() for i in range(0, n_samples, batch_size))
    name = f"{label}:n={n_samples}:seq_len={seq_len}:seed={seed}"
    log.debug("calibration %s from %d tokens", name, len(ids))
    return Calibration(batches=batches, loss=next_token_loss, name=name)


def calibration_from_record(tok: Any, record: Mapping[str, Any]) -> Calibration:
    """Rebuild the calibration a table or plan recorded (``meta["calibration"]``: its name
    ``"<corpus>:n=<n>:seq_len=<len>:seed=<seed>"`` and fingerprint) with :func:`calibration`.

    Raises ``ValueError`` when the name is not of that form (custom batches or raw text) or
    the rebuilt batches do not have the recorded fingerprint (another tokenizer or corpus).
    """
    import re

    name = str(record.get("name", ""))
    m = re.fullmatch(
        r"(?P<corpus>[\w-]+):n=(?P<n>\d+):seq_len=(?P<seq>\d+):seed=(?P<seed>\d+)", name
    )
    if m is None or m["corpus"] not in corpus_names():
        raise ValueError(
            f"the recorded calibration {name!r} is not a built-in corpus sample; "
            "pass the calibration options explicitly"
        )
    n_batches = int(record.get("batches", m["n"]))
    n = int(m["n"])
    batch_size = -(-n // n_batches) if n_batches else 1
    calib = calibration(
        tok, n, int(m["seq"]), corpus=m["corpus"], seed=int(m["seed"]), batch_size=batch_size
    )
    want = record.get("fingerprint")
    if want is not None and calib.fingerprint() != want:
        raise ValueError(
            f"rebuilt calibration {name!r} has fingerprint {calib.fingerprint()}, the record "
            f"says {want}: another tokenizer or corpus version"
        )
    return calib
