"""Offline corpora: the by-article Wikipedia split, Lee news, sentences, the JSON cache."""

from __future__ import annotations

import json

import pytest

from bitalloc.data import articles, corpora, corpus_names, sentences, text


def test_corpus_names() -> None:
    assert corpus_names() == ("wikipedia-calib", "wikipedia-heldout", "lee")


def test_wikipedia_split_is_disjoint_by_article() -> None:
    calib = {a.title for a in articles("wikipedia-calib")}
    held = {a.title for a in articles("wikipedia-heldout")}
    assert calib.isdisjoint(held)
    everything = [a.title for a in corpora._wikipedia()]
    assert calib | held == set(everything)
    assert everything == sorted(everything)
    assert calib == set(everything[:: corpora.CALIB_EVERY])
    assert len(calib) == 14 and len(held) == 83


def test_texts_do_not_share_paragraphs() -> None:
    calib = set(text("wikipedia-calib").split("\n\n"))
    held = set(text("wikipedia-heldout").split("\n\n"))
    assert not calib & held


def test_lee_corpus() -> None:
    docs = articles("lee")
    assert len(docs) == 300
    assert docs[0].text.startswith("Hundreds of people have been forced")


def test_unknown_corpus_name() -> None:
    with pytest.raises(ValueError, match="`name` must be one of"):
        text("wikipedia")


def test_sentences_seeded() -> None:
    a = sentences("wikipedia-heldout", 20, seed=0)
    assert a == sentences("wikipedia-heldout", 20, seed=0)
    assert a != sentences("wikipedia-heldout", 20, seed=1)
    assert len(set(a)) == 20 and all(len(s.split()) >= 5 for s in a)
    assert len(sentences("lee", None)) > 1000


@pytest.mark.parametrize("n", [0, -3, 10**7])
def test_sentences_bad_n(n: int) -> None:
    with pytest.raises(ValueError, match="`n`"):
        sentences("lee", n)


def test_wikipedia_cache_written_atomically(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BITALLOC_CACHE_DIR", str(tmp_path))
    corpora._wikipedia.cache_clear()
    try:
        first = corpora._wikipedia()
        files = list((tmp_path / "data").iterdir())
        assert [f.name for f in files] == [f"wikipedia-v{corpora._CACHE_VERSION}.json"]
        payload = json.loads(files[0].read_text(encoding="utf-8"))
        assert len(payload["articles"]) == len(first)
        corpora._wikipedia.cache_clear()
        assert corpora._wikipedia() == first  # read back from the JSON cache
    finally:
        corpora._wikipedia.cache_clear()
