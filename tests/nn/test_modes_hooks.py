"""bitalloc.nn scopes restore every flag, and the Hessian hooks share fused inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitalloc.nn.blocks import find_blocks, n_batches, owning_blocks
from bitalloc.nn.hessians import HessianHooks, one_pass
from bitalloc.nn.modes import eval_mode, eval_no_grad, grad_scope


class Fused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[0](x) + self.layers[1](x)  # both read the same tensor


def test_eval_mode_restores_flags_on_error() -> None:
    model = Fused().train()
    model.drop.eval()  # a mixed state must come back exactly
    with pytest.raises(RuntimeError), eval_no_grad(model):
        assert not model.training and not torch.is_grad_enabled()
        raise RuntimeError("boom")
    assert model.training and not model.drop.training and model.layers[0].training


def test_grad_scope_only_named_weights_and_restored() -> None:
    model = Fused().train()
    model.layers[1].bias.requires_grad_(False)
    w = model.layers[0].weight
    with eval_mode(model), grad_scope(model, [w]):
        assert [p.requires_grad for p in model.parameters()] == [True, False, False, False]
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]
    assert model.training


def test_hessians_share_fused_input_and_match_direct() -> None:
    torch.manual_seed(0)
    model = Fused()
    mods = {"layers.0": model.layers[0], "layers.1": model.layers[1]}
    xs = [torch.randn(3, 5, 4) for _ in range(2)]
    hooks = one_pass(model, mods, xs, lambda m, x: m(x))
    sums, tokens = hooks.sums()
    assert sums["layers.0"] is sums["layers.1"] and tokens["layers.0"] == 30
    flat = torch.cat([x.reshape(-1, 4) for x in xs]).double()
    torch.testing.assert_close(sums["layers.0"], flat.T @ flat)
    torch.testing.assert_close(hooks.hessians()["layers.1"], 2 * flat.T @ flat / 30)


def test_hessian_hooks_name_the_layer() -> None:
    model = Fused()
    mods = {"layers.0": model.layers[0], "layers.1": model.layers[1]}
    with pytest.raises(ValueError, match="non-finite.*layers.0"):
        one_pass(model, mods, [torch.full((2, 4), float("nan"))], lambda m, x: m(x))
    with HessianHooks({"drop": model.drop}) as hooks, pytest.raises(ValueError, match="drop"):
        hooks.hessians()


def test_blocks_and_batches() -> None:
    model = Fused()
    blocks = find_blocks(model, ["layers.1"])
    assert [b for b, _ in blocks] == ["layers.0", "layers.1"]
    assert owning_blocks({"u": "layers.1", "v": "drop"}, ["layers.0", "layers.1"]) == {
        "u": "layers.1",
        "v": None,
    }

    class Calib:
        batches = [0, 1, 2]

    assert n_batches(Calib(), None) == 3 and n_batches(Calib(), 2) == 2
    with pytest.raises(ValueError, match="`max_lim`"):
        n_batches(Calib(), 0, "max_lim")
