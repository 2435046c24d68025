"""kl_probe, lim and zd against direct computations on a tiny random Llama."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bitalloc import SearchSpace, estimate
from bitalloc.backends.rtn import RtnBackend
from bitalloc.kernels import fake_quantize
from bitalloc.nn.blocks import find_blocks
from bitalloc.search.calibration import Calibration
from bitalloc.sensitivity import KlProbeEstimator, LimEstimator, ZdEstimator
from bitalloc.sensitivity import kl_probe as kl_module
from bitalloc.sensitivity._blocks import unit_blocks
from bitalloc.sensitivity.base import monotone

MINMAX = RtnBackend(grid="minmax")  # the hand computations use fake_quantize's minmax grid

FORMATS = ["int2-g32", "int3-g32", "int4-g32", "int8-g32"]
BITS = [2, 3, 4, 8]
DOWN0 = "model.layers.0.mlp.down_proj"


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def log_probs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=batch).logits.double()  # float64 log_softmax, as kl_probe
    return torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)


def hand_kl(model: nn.Module, calib: Calibration, fqn: str, bits: int, rows=None) -> float:
    """KL(p_ref || p_q) averaged over all positions, quantizing a copy by hand."""
    quant = copy.deepcopy(model)
    w = dict(quant.named_modules())[fqn].weight
    with torch.no_grad():
        part = w if rows is None else w[rows[0] : rows[1]]
        part.copy_(fake_quantize(part.detach().clone(), bits, 32))
    kls = []
    for batch in calib.batches:
        ref, q = log_probs(model, batch), log_probs(quant, batch)
        kls.append((ref.exp() * (ref - q)).sum(dim=-1))
    return float(torch.cat(kls).double().mean())


class TestBlocks:
    def test_llama_blocks_found_by_prefix(self, tiny_llama) -> None:
        space = SearchSpace.from_model(tiny_llama, FORMATS, exclude=())
        blocks = find_blocks(tiny_llama, [u.fqn for u in space.units])
        assert [b for b, _ in blocks] == ["model.layers.0", "model.layers.1"]
        owner = unit_blocks(space, [b for b, _ in blocks])
        assert owner[DOWN0] == "model.layers.0" and owner["lm_head"] is None

    def test_no_module_list_and_nested_lists(self) -> None:
        assert find_blocks(nn.Sequential(nn.Linear(4, 4)), ["0"]) == []
        layer = nn.Module()
        layer.experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(5))
        model = nn.Module()
        model.layers = nn.ModuleList([layer, copy.deepcopy(layer)])
        found = find_blocks(model, ["layers.0.experts.3", "layers.1.experts.0"])
        assert [b for b, _ in found] == ["layers.0", "layers.1"]


class TestKlProbe:
    def test_equals_hand_kl(self, tiny_llama, tiny_calib) -> None:
        full = SearchSpace.from_model(tiny_llama, FORMATS)
        space = full.restrict([DOWN0, "model.layers.1.self_attn.v_proj"])
        table = estimate(
            tiny_llama, space, tiny_calib, "kl_probe", max_batches=None, backend=MINMAX
        )
        direct = np.array([hand_kl(tiny_llama, tiny_calib, DOWN0, b) for b in BITS])
        expected = np.minimum.accumulate(direct)  # running min from the narrowest
        i = space.names.index(DOWN0)
        np.testing.assert_allclose(table.values[i], expected, rtol=1e-4, atol=1e-9)
        assert table.meta["forward_passes"] == 4 * (1 + 8)
        assert (table.values >= 0).all() and (np.diff(table.values, axis=1) <= 0).all()

    def test_channel_unit_quantizes_only_its_rows(self, tiny_llama, tiny_calib) -> None:
        space = SearchSpace.from_model(tiny_llama, ["int2-g32"], channel_group=16)
        name = f"{DOWN0}[16:32]"
        sub = space.restrict([name])
        table = estimate(tiny_llama, sub, tiny_calib, "kl_probe", max_batches=2, backend=MINMAX)
        calib2 = Calibration(batches=tiny_calib.batches[:2])
        assert table.values[0, 0] == pytest.approx(
            hand_kl(tiny_llama, calib2, DOWN0, 2, rows=(16, 32)), rel=1e-4
        )

    def test_model_unchanged_after_probe(self, tiny_llama, tiny_calib) -> None:
        before = snapshot(tiny_llama)
        tiny_llama.train()
        space = SearchSpace.from_model(tiny_llama, FORMATS)
        estimate(tiny_llama, space, tiny_calib, "kl_probe", max_batches=1)
        assert_unchanged(tiny_llama, before)
        assert all(m.training for m in tiny_llama.modules())  # mode restored

    def test_model_unchanged_when_probe_raises(self, tiny_llama, tiny_calib, monkeypatch) -> None:
        before = snapshot(tiny_llama)
        seen: list[bool] = []

        def boom(model, calib, index):
            after = model.state_dict()
            seen.append(any(not torch.equal(after[k], v) for k, v in before.items()))
            raise RuntimeError("boom mid-probe")

        monkeypatch.setattr(kl_module, "_logits", boom)
        space = SearchSpace.from_model(tiny_llama, FORMATS)
        with pytest.raises(RuntimeError, match="boom"):
            estimate(tiny_llama, space, tiny_calib, "kl_probe")
        assert seen == [True], "the weight was swapped when the error hit"
        assert_unchanged(tiny_llama, before)

    def test_needs_calibration(self, tiny_llama) -> None:
        space = SearchSpace.from_model(tiny_llama, FORMATS)
        with pytest.raises(ValueError, match="calib"):
            KlProbeEstimator().estimate(tiny_llama, space, None)
        with pytest.raises(ValueError, match="needs `calib`"):
            estimate(tiny_llama, space, None, "kl_probe")
        with pytest.raises(ValueError, match="empty"):
            Calibration(batches=())

    def test_bad_max_batches(self, tiny_llama, tiny_calib) -> None:
        space = SearchSpace.from_model(tiny_llama, FORMATS)
        with pytest.raises(ValueError, match="max_batches"):
            estimate(tiny_llama, space, tiny_calib, "kl_probe", max_batches=0)

    def test_monotone_running_min_from_narrowest(self) -> None:
        space = SearchSpace.from_model(nn.Sequential(nn.Linear(32, 4)), FORMATS)
        got = monotone(np.array([[1.0, 3.0, 0.5, 2.0]]), space)
        np.testing.assert_array_equal(got, [[1.0, 1.0, 0.5, 0.5]])


class TestLim:
    def test_importance_equals_hand_cosine(self, tiny_llama, tiny_calib) -> None:
        space = SearchSpace.from_model(tiny_llama, FORMATS, exclude=())
        table = estimate(tiny_llama, space, tiny_calib, "lim", max_batches=1, backend=MINMAX)
        with torch.no_grad():
            hs = tiny_llama(input_ids=tiny_calib.batches[0], output_hidden_states=True)
        x_in, x_out = hs.hidden_states[0][0], hs.hidden_states[1][0]  # around model.layers.0
        cos = (x_in * x_out).sum(-1) / (x_in.norm(dim=-1) * x_out.norm(dim=-1))
        importance = 1.0 - float(cos.double().mean())
        scores = table.meta["block_importance"]
        assert scores["model.layers.0"] == pytest.approx(importance, abs=1e-6)
        w = dict(tiny_llama.named_modules())[DOWN0].weight.detach()
        rel = float((fake_quantize(w, 3, 32) - w).pow(2).sum() / w.pow(2).sum())
        i = space.names.index(DOWN0)
        assert table.values[i, 1] == pytest.approx(scores["model.layers.0"] * rel, rel=1e-5)
        # lm_head lies outside every block: mean importance of the blocks
        assert table.meta["fallback_importance"] == pytest.approx(np.mean(list(scores.values())))

    def test_without_blocks_equals_weight_error(self) -> None:
        model = nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 8))
        calib = Calibration(batches=(torch.randn(32, 64),), forward=lambda m, b: m(b))
        space = SearchSpace.from_model(model, FORMATS)
        lim = estimate(model, space, calib, LimEstimator())
        plain = estimate(model, space, calib, "weight_error").values  # same backend and calib
        np.testing.assert_allclose(lim.values, plain)
        assert lim.meta["forward_passes"] == 0

    @pytest.mark.parametrize("method", ["lim", "kl_probe"])
    def test_nan_activations_raise(self, tiny_llama, method: str) -> None:
        x = torch.randn(1, 8, 64)
        x[0, 3, 5] = float("nan")
        calib = Calibration(batches=({"inputs_embeds": x},))
        space = SearchSpace.from_model(tiny_llama, FORMATS)
        with pytest.raises(ValueError, match="non-finite"):
            estimate(tiny_llama, space, calib, method)


class TestZd:
    def test_score_equals_hand_count(self, tiny_llama) -> None:
        space = SearchSpace.from_model(tiny_llama, FORMATS)
        table = estimate(tiny_llama, space, None, "zd")
        mods = [m for n, m in tiny_llama.named_modules() if n in set(space.names)]
        mods = [m for m in mods if m in set(tiny_llama.model.layers[1].modules())]
        count = total = 0
        for m in mods:
            w = m.weight.detach().double().flatten()
            count += int(((w - w.mean()) / w.std(unbiased=False) > 1).sum())
            total += w.numel()
        assert len(mods) == 7
        assert table.meta["block_score"]["model.layers.1"] == pytest.approx(count / total)
        name = "model.layers.1.self_attn.o_proj"
        w = dict(tiny_llama.named_modules())[name].weight.detach()
        rel = float((fake_quantize(w, 2, 32) - w).pow(2).sum() / w.pow(2).sum())
        value = table.values[space.names.index(name), 0]
        assert value == pytest.approx(count / total * rel, rel=1e-5)

    def test_absolute_counts_both_tails(self) -> None:
        w = torch.tensor([-3.0, 0.0, 0.0, 0.0, 0.0, 3.0]).reshape(1, 6)
        assert ZdEstimator().score([w]) == pytest.approx(1 / 6)
        assert ZdEstimator(absolute=True).score([w]) == pytest.approx(2 / 6)

    def test_nan_weights_raise(self, tiny_llama) -> None:
        with torch.no_grad():
            tiny_llama.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
        space = SearchSpace.from_model(tiny_llama, FORMATS)
        with pytest.raises(ValueError, match="non-finite"):
            estimate(tiny_llama, space, None, "zd")
