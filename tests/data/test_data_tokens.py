"""Token windows and calibration sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitalloc.data import calibration, next_token_loss, windows
from bitalloc.data.tokens import random_starts
from bitalloc.search.calibration import Calibration

TEXT = " ".join(f"word{i:04d}" for i in range(1000))  # 8 999 bytes


def test_windows_all_aligned(byte_tok) -> None:
    w = windows(byte_tok, TEXT, seq_len=100)
    ids = np.frombuffer(TEXT.encode(), dtype=np.uint8)
    assert w.shape == (89, 100) and w.dtype == torch.long
    for i in range(89):
        assert np.array_equal(w[i].numpy(), ids[i * 100 : (i + 1) * 100])


def test_windows_spread_evenly_without_overlap(byte_tok) -> None:
    w = windows(byte_tok, TEXT, seq_len=100, n_windows=7)
    full = windows(byte_tok, TEXT, seq_len=100)
    slots = [next(j for j in range(89) if torch.equal(full[j], row)) for row in w]
    assert w.shape == (7, 100)
    assert slots == sorted(set(slots)) and slots[0] == 0
    assert max(np.diff(slots)) - min(np.diff(slots)) <= 1


def test_windows_from_corpus_name(byte_tok) -> None:
    w = windows(byte_tok, "lee", seq_len=256, n_windows=4)
    assert w.shape == (4, 256)
    assert torch.equal(w, windows(byte_tok, "lee", seq_len=256, n_windows=4))


def test_windows_errors(byte_tok) -> None:
    with pytest.raises(ValueError, match="shorter than one window"):
        windows(byte_tok, "two words", seq_len=512)
    with pytest.raises(ValueError, match="`n_windows`=100 exceeds the 89 windows"):
        windows(byte_tok, TEXT, seq_len=100, n_windows=100)
    with pytest.raises(ValueError, match="`seq_len` must be an int >= 2"):
        windows(byte_tok, TEXT, seq_len=1)
    with pytest.raises(ValueError, match="`n_windows` must be an int >= 1"):
        windows(byte_tok, TEXT, seq_len=100, n_windows=0)
    with pytest.raises(ValueError, match="not a corpus name"):
        windows(byte_tok, "wikipedia-held", seq_len=100)


def test_random_starts_do_not_overlap() -> None:
    for seed in range(20):
        starts = np.sort(random_starts(10_000, 30, 300, seed))
        assert starts[0] >= 0 and starts[-1] + 300 <= 10_000
        assert np.all(np.diff(starts) >= 300)
    assert np.array_equal(np.sort(random_starts(900, 3, 300, 0)), [0, 300, 600])


def test_calibration_seeded(byte_tok) -> None:
    a = calibration(byte_tok, n_samples=8, seq_len=64, corpus="wikipedia-calib", seed=0)
    b = calibration(byte_tok, n_samples=8, seq_len=64, corpus="wikipedia-calib", seed=0)
    c = calibration(byte_tok, n_samples=8, seq_len=64, corpus="wikipedia-calib", seed=1)
    assert isinstance(a, Calibration) and len(a) == 8
    assert all(x.dtype == torch.long and x.shape == (1, 64) for x in a.batches)
    assert all(torch.equal(x, y) for x, y in zip(a.batches, b.batches))
    assert not all(torch.equal(x, y) for x, y in zip(a.batches, c.batches))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.name == "wikipedia-calib:n=8:seq_len=64:seed=0"


def test_calibration_batches_and_windows_come_from_corpus(byte_tok) -> None:
    cal = calibration(byte_tok, n_samples=5, seq_len=100, corpus=TEXT, batch_size=2, seed=3)
    assert [tuple(b.shape) for b in cal.batches] == [(2, 100), (2, 100), (1, 100)]
    ids = TEXT.encode()
    rows = torch.cat(cal.batches)
    starts = sorted(ids.find(bytes(r.tolist())) for r in rows)
    assert all(s >= 0 for s in starts) and all(np.diff(starts) >= 100)
    assert cal.name.startswith("text-")


def test_calibration_errors(byte_tok) -> None:
    with pytest.raises(ValueError, match="`n_samples` must be an int >= 1"):
        calibration(byte_tok, n_samples=0, seq_len=64)
    with pytest.raises(ValueError, match="`seq_len` must be an int >= 2"):
        calibration(byte_tok, n_samples=4, seq_len=1)
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1"):
        calibration(byte_tok, n_samples=4, seq_len=64, batch_size=0)
    with pytest.raises(ValueError, match="has 8999 tokens, fewer than the 10000 needed"):
        calibration(byte_tok, n_samples=100, seq_len=100, corpus=TEXT)
    with pytest.raises(ValueError, match="`corpus`='wiki' is not a corpus name"):
        calibration(byte_tok, n_samples=4, seq_len=64, corpus="wiki")


def test_next_token_loss_matches_model_loss(tiny_llama, byte_tok) -> None:
    cal = calibration(byte_tok, n_samples=2, seq_len=32, corpus="lee", batch_size=2)
    batch = cal.batches[0]
    with torch.no_grad():
        out = cal.forward(tiny_llama, batch)
        expected = tiny_llama(input_ids=batch, labels=batch).loss
    assert torch.allclose(cal.loss(out, batch), expected, atol=1e-5)
    assert cal.loss is next_token_loss
