"""Perplexity / KL evaluation and embedding fidelity on tiny random models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bitalloc.data import LMScore, embedding_fidelity, evaluate_lm, perplexity


def _windows(n: int = 3, seq_len: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (n, seq_len), generator=torch.Generator().manual_seed(0))


def _perturbed(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    other = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn_like(p))
    return other


def test_identical_candidate_has_zero_kl(tiny_llama) -> None:
    scores = evaluate_lm(tiny_llama, {"copy": copy.deepcopy(tiny_llama)}, _windows())
    assert list(scores) == ["reference", "copy"]
    assert scores["reference"].kl == 0.0 and scores["copy"].kl == 0.0
    assert scores["copy"].ppl == scores["reference"].ppl
    assert scores["copy"].n_tokens == 3 * 23


def test_perturbed_candidate_has_positive_kl(tiny_llama) -> None:
    scores = evaluate_lm(tiny_llama, {"noisy": _perturbed(tiny_llama)}, _windows())
    assert scores["noisy"].kl > 1e-4
    assert scores["noisy"].ppl != scores["reference"].ppl


def test_ppl_matches_cross_entropy(tiny_llama) -> None:
    w = _windows(1, 32)
    with torch.no_grad():
        logits = tiny_llama(input_ids=w).logits
    nll = F.cross_entropy(logits[0, :-1], w[0, 1:]).item()
    score = evaluate_lm(tiny_llama, {}, w)["reference"]
    assert score.nll == pytest.approx(nll, rel=1e-5)
    assert score.ppl == pytest.approx(math.exp(nll), rel=1e-5)
    assert perplexity(tiny_llama, w) == score.ppl


def test_kl_matches_hand_computation(tiny_llama) -> None:
    w, noisy = _windows(1, 16), _perturbed(tiny_llama)
    with torch.no_grad():
        p = torch.log_softmax(tiny_llama(input_ids=w).logits[0, :-1], -1)
        q = torch.log_softmax(noisy(input_ids=w).logits[0, :-1], -1)
    expected = (p.exp() * (p - q)).sum(-1).mean().item()
    assert evaluate_lm(tiny_llama, {"n": noisy}, w)["n"].kl == pytest.approx(expected, rel=1e-4)


def test_batch_size_and_callback(tiny_llama) -> None:
    w, calls = _windows(5), []
    one = evaluate_lm(tiny_llama, {}, w)["reference"]
    two = evaluate_lm(tiny_llama, {}, w, batch_size=2, callback=lambda i, n: calls.append((i, n)))[
        "reference"
    ]
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert two.ppl == pytest.approx(one.ppl, rel=1e-5)


def test_training_flags_restored(tiny_llama) -> None:
    tiny_llama.train()
    evaluate_lm(tiny_llama, {}, _windows(1))
    assert all(m.training for m in tiny_llama.modules())


def test_lmscore_to_dict() -> None:
    assert LMScore(ppl=2.0, kl=0.1, nll=0.69, n_tokens=7).to_dict() == {
        "ppl": 2.0,
        "kl": 0.1,
        "nll": 0.69,
        "n_tokens": 7,
    }


def test_evaluate_lm_errors(tiny_llama) -> None:
    w = _windows(1)
    with pytest.raises(ValueError, match="reserved name 'reference'"):
        evaluate_lm(tiny_llama, {"reference": tiny_llama}, w)
    with pytest.raises(ValueError, match="`windows` must be a 2-D integer tensor"):
        evaluate_lm(tiny_llama, {}, w[0])
    with pytest.raises(ValueError, match="must hold integer token ids"):
        evaluate_lm(tiny_llama, {}, w.float())
    with pytest.raises(ValueError, match=">= 2 tokens"):
        evaluate_lm(tiny_llama, {}, w[:, :1])
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1"):
        evaluate_lm(tiny_llama, {}, w, batch_size=0)
    with pytest.raises(TypeError, match="candidates\\['x'\\]"):
        evaluate_lm(tiny_llama, {"x": "not a model"}, w)


SENTENCES = ["The cat sits on the mat.", "Stocks fell sharply on Monday.", "A short one."]


def test_embedding_fidelity_identical_is_one(tiny_encoder, byte_tok) -> None:
    fid = embedding_fidelity(
        tiny_encoder, copy.deepcopy(tiny_encoder), byte_tok, SENTENCES, batch_size=2
    )
    assert fid == pytest.approx(1.0, abs=1e-6)


def test_embedding_fidelity_drops_when_perturbed(tiny_encoder, byte_tok) -> None:
    fid = embedding_fidelity(tiny_encoder, _perturbed(tiny_encoder, 0.005), byte_tok, SENTENCES)
    assert 0.5 < fid < 0.99999


def test_embedding_fidelity_errors(tiny_encoder, byte_tok) -> None:
    with pytest.raises(ValueError, match="`sentences` must be a non-empty list"):
        embedding_fidelity(tiny_encoder, tiny_encoder, byte_tok, [])
    with pytest.raises(ValueError, match="`sentences` must be a non-empty list"):
        embedding_fidelity(tiny_encoder, tiny_encoder, byte_tok, "one sentence")
    with pytest.raises(ValueError, match="`batch_size`"):
        embedding_fidelity(tiny_encoder, tiny_encoder, byte_tok, SENTENCES, batch_size=0)
