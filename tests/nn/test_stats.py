"""Input second moments: equal to a hand computation; bad calibration names the layer."""

from __future__ import annotations

import pytest
import torch

from bitalloc.nn import input_moments
from bitalloc.search.calibration import Calibration

NAME = "model.layers.1.mlp.down_proj"


def test_moments_equal_hand_computation(tiny_llama, tiny_calib) -> None:
    seen: list[torch.Tensor] = []
    h = tiny_llama.get_submodule(NAME).register_forward_pre_hook(
        lambda _m, a: seen.append(a[0].detach().reshape(-1, a[0].shape[-1]))
    )
    with torch.no_grad():
        for b in tiny_calib.batches:
            tiny_llama(input_ids=b)
    h.remove()
    x = torch.cat(seen).double()
    m = input_moments(tiny_llama, [NAME], tiny_calib)[NAME]
    assert m.tokens == x.shape[0] == tiny_calib.n_tokens
    torch.testing.assert_close(m.mean_square.double(), x.square().mean(0), rtol=1e-5, atol=0)
    torch.testing.assert_close(m.l2_norm.double(), x.norm(dim=0), rtol=1e-5, atol=0)


def test_too_short_calibration_names_the_layer(tiny_llama) -> None:
    short = Calibration(batches=(torch.randint(0, 320, (1, 5)),))
    want = r"layer 'model\.layers\.1\.mlp\.down_proj' saw 5 calibration tokens"
    with pytest.raises(ValueError, match=want):
        input_moments(tiny_llama, [NAME, "model.layers.0.self_attn.q_proj"], short)


def test_nan_activations_name_the_layer() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    batch = torch.randn(32, 8)
    batch[3, 2] = float("nan")
    calib = Calibration(batches=(batch,), forward=lambda m, b: m(b))
    with pytest.raises(ValueError, match="non-finite .* enter layer '0' on calibration batch 0"):
        input_moments(model, ["0", "1"], calib)


def test_only_linear_layers(tiny_llama, tiny_calib) -> None:
    with pytest.raises(ValueError, match="need nn.Linear layers; 'model.embed_tokens' is Emb"):
        input_moments(tiny_llama, ["model.embed_tokens"], tiny_calib)
    with pytest.raises(ValueError, match="'nope' is missing"):
        input_moments(tiny_llama, ["nope"], tiny_calib)
