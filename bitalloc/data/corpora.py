"""Offline English text corpora shipped inside the ``gensim`` wheel.

Corpora (see :func:`corpus_names`):

``"wikipedia-calib"`` / ``"wikipedia-heldout"``
    The shortened English Wikipedia dump in gensim's test data
    (``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``). Main-namespace,
    non-redirect pages are cleaned with :func:`gensim.corpora.wikicorpus.filter_wiki`; an
    article keeps its prose paragraphs (lines longer than 200 characters that are not list,
    table or heading lines) and is dropped when none remain (97 articles). The split is **by
    article** and deterministic: sort the articles by title; the articles at positions
    0, 7, 14, ... (every 7th) form the calibration part, all others the held-out part, so no
    article (title) appears in both.
    (Every 8th gives only 63 k SmolLM2 tokens, fewer than the default 128 x 512
    calibration windows; every 7th gives 14 articles and 85 k tokens, and 83 held-out
    articles with 452 k tokens.)
``"lee"``
    gensim's Lee news corpus (``lee_background.cor``, 300 Australian news stories), a second
    held-out domain that shares nothing with Wikipedia.

The extracted Wikipedia articles are cached as JSON under ``<cache>/data/`` (atomic write).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass

import numpy as np

from bitalloc.models.cache import cache_dir
from bitalloc.search._io import atomic_write_text

log = logging.getLogger(__name__)

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_FILE = "lee_background.cor"
CALIB_EVERY = 7
MIN_PARAGRAPH_CHARS = 200
_CACHE_VERSION = 1
_CORPORA = ("wikipedia-calib", "wikipedia-heldout", "lee")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True, slots=True)
class Article:
    """One document of a corpus: a title and its prose (paragraphs joined by blank lines)."""

    title: str
    text: str


def corpus_names() -> tuple[str, ...]:
    """Names accepted by :func:`text`, :func:`articles` and :func:`sentences`."""
    return _CORPORA


def _check_name(name: str) -> None:
    if name not in _CORPORA:
        raise ValueError(f"`name` must be one of {list(_CORPORA)}, got {name!r}")


def _gensim_test_file(filename: str) -> str:
    try:
        import gensim
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "the offline corpora ship inside gensim: pip install gensim==4.4.0"
        ) from exc
    path = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", filename)
    if not os.path.isfile(path):  # pragma: no cover - depends on the environment
        raise FileNotFoundError(f"gensim test file not found: {path}")
    return path


def _extract_wikipedia() -> list[Article]:
    """Parse and clean the gensim Wikipedia dump (about 3 s)."""
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    out: list[Article] = []
    with bz2.BZ2File(_gensim_test_file(WIKI_FILE)) as fh:
        for title, raw, _pid in extract_pages(fh, filter_namespaces=("0",)):
            if not raw or raw.lstrip().lower().startswith("#redirect"):
                continue
            cleaned = re.sub(r"'{2,}", "", filter_wiki(raw))
            paragraphs = [
                line.strip()
                for line in cleaned.split("\n")
                if len(line.strip()) > MIN_PARAGRAPH_CHARS
                and not line.strip().startswith(("*", "|", "!", "{", "="))
            ]
            if paragraphs:
                out.append(Article(title=title, text="\n\n".join(paragraphs)))
    out.sort(key=lambda a: a.title)
    return out


@functools.lru_cache(maxsize=1)
def _wikipedia() -> tuple[Article, ...]:
    """All cleaned Wikipedia articles sorted by title, read from the JSON cache if present."""
    path = cache_dir("data", f"wikipedia-v{_CACHE_VERSION}.json")
    if path.is_file():
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))["articles"]
            return tuple(Article(title=r["title"], text=r["text"]) for r in rows)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable corpus cache %s; re-extracting", path)
    articles = _extract_wikipedia()
    payload = {
        "source": WIKI_FILE,
        "version": _CACHE_VERSION,
        "articles": [{"title": a.title, "text": a.text} for a in articles],
    }
    try:
        atomic_write_text(path, json.dumps(payload, ensure_ascii=False))
        log.info("cached %d Wikipedia articles at %s", len(articles), path)
    except OSError as exc:  # a read-only cache must not break loading
        log.warning("could not write corpus cache %s: %s", path, exc)
    return tuple(articles)


@functools.lru_cache(maxsize=1)
def _lee() -> tuple[Article, ...]:
    with open(_gensim_test_file(LEE_FILE), encoding="utf-8", errors="replace") as fh:
        docs = [line.strip() for line in fh if line.strip()]
    return tuple(Article(title=f"lee-{i:03d}", text=doc) for i, doc in enumerate(docs))


def articles(name: str) -> tuple[Article, ...]:
    """The documents of corpus ``name`` in a deterministic order (Wikipedia: by title)."""
    _check_name(name)
    if name == "lee":
        return _lee()
    wiki = _wikipedia()
    calib = name == "wikipedia-calib"
    return tuple(a for i, a in enumerate(wiki) if (i % CALIB_EVERY == 0) == calib)


def text(name: str) -> str:
    """The whole corpus ``name`` as one string, documents separated by blank lines."""
    return "\n\n".join(a.text for a in articles(name))


def sentences(
    name: str = "wikipedia-heldout",
    n: int | None = 256,
    *,
    seed: int = 0,
    min_words: int = 5,
    max_chars: int = 400,
) -> list[str]:
    """``n`` prose sentences of corpus ``name``, drawn without replacement with ``seed``.

    Paragraphs are split after ``.``, ``!`` or ``?`` followed by whitespace and a capital,
    digit, quote or bracket; sentences with fewer than ``min_words`` words or more than
    ``max_chars`` characters are dropped. ``n=None`` returns every sentence in corpus order.
    """
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"`n` must be a positive int or None, got {n!r}")
    pool = [
        s.strip()
        for a in articles(name)
        for para in a.text.split("\n\n")
        for s in _SENTENCE_SPLIT.split(para)
        if len(s.split()) >= min_words and len(s.strip()) <= max_chars
    ]
    if n is None:
        return pool
    if n > len(pool):
        raise ValueError(f"`n`={n} exceeds the {len(pool)} sentences of corpus {name!r}")
    idx = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return [pool[int(i)] for i in idx]
