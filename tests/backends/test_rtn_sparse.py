"""Sparse formats through rtn (magnitude and Wanda masks), estimators and the ILP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitalloc import SearchSpace, Solution, Status, apply, estimate, solve
from bitalloc.data.tokens import next_token_loss
from bitalloc.kernels.sparsity import fake_quantize_sparse, prune_mask, satisfies_n_m
from bitalloc.search.budget import Budget
from bitalloc.search.calibration import Calibration
from bitalloc.sensitivity.outliers import input_norms

SPARSE = ["int4-g32-s2:4", "int8-pc-s0.5", "bf16-s0.7", "int4-g32"]


def _plan(model) -> Solution:
    space = SearchSpace.from_model(model, SPARSE)
    choice = tuple(SPARSE[i % len(SPARSE)] for i in range(len(space)))
    return Solution(space=space, choice=choice, status=Status.FEASIBLE)


def test_rtn_prunes_then_quantizes_and_restores(tiny_llama) -> None:
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    sol = _plan(tiny_llama)
    modules = dict(tiny_llama.named_modules())
    with apply(tiny_llama, sol, "rtn"):
        for name, f in sol.assignment.items():
            w0 = before[f"{name}.weight"]
            w = modules[name].weight
            expected = fake_quantize_sparse(
                w0, f.bits, f.group_size, f.symmetric, f.float_kind, f.sparsity, f.n_m
            )
            assert torch.equal(w, expected), name
            rows, cols = w.shape
            zeros = int((w == 0).sum())
            if f.n_m is not None:
                assert satisfies_n_m(w, 2, 4)
            if f.is_sparse:  # at least the pruned ones (a kept weight may round to 0)
                assert zeros >= rows * f.pruned_per_row(cols)
    for k, v in tiny_llama.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_wanda_mask_uses_calibration_norms(tiny_llama, tiny_calib) -> None:
    space = SearchSpace.from_model(tiny_llama, ["int8-pc-s0.5"])
    sol = Solution(space=space, choice=("int8-pc-s0.5",) * len(space), status=Status.FEASIBLE)
    name = "model.layers.0.mlp.down_proj"
    norms = input_norms(tiny_llama, [name], tiny_calib)[name]
    w0 = tiny_llama.get_submodule(name).weight.detach().clone()
    with pytest.raises(ValueError, match="`calib` is required.*wanda"):
        apply(tiny_llama, sol, "rtn", mask_score="wanda")
    with apply(tiny_llama, sol, "rtn", mask_score="wanda", calib=tiny_calib):
        w = tiny_llama.get_submodule(name).weight
        wanda = prune_mask(w0, 0.5, act_norms=norms)
        assert torch.equal(w != 0, wanda & (fake_quantize_sparse(w0, 8, None, mask=wanda) != 0))
        assert not torch.equal(wanda, prune_mask(w0, 0.5))  # differs from magnitude
    assert torch.equal(tiny_llama.get_submodule(name).weight, w0)
    with pytest.raises(ValueError, match="`mask_score` must be one of"):
        apply(tiny_llama, sol, "rtn", mask_score="random")


def test_input_norms_by_hand(tiny_llama, tiny_calib) -> None:
    name = "model.layers.1.self_attn.o_proj"
    seen: list[torch.Tensor] = []
    h = tiny_llama.get_submodule(name).register_forward_pre_hook(
        lambda _m, a: seen.append(a[0].detach().reshape(-1, a[0].shape[-1]))
    )
    with torch.no_grad():
        for b in tiny_calib.batches:
            tiny_llama(input_ids=b)
    h.remove()
    x = torch.cat(seen).double()
    norms = input_norms(tiny_llama, [name], tiny_calib)[name]
    assert torch.allclose(norms.double(), x.norm(dim=0), rtol=1e-5)
    with pytest.raises(ValueError, match="nn.Linear"):
        input_norms(tiny_llama, ["model.embed_tokens"], tiny_calib)


@pytest.mark.parametrize("method", ["weight_error", "layer_error", "fisher"])
def test_estimators_score_sparse_formats(tiny_llama, tiny_calib, method: str) -> None:
    formats = ["int4-g32", "int4-g32-s2:4", "int4-g32-s0.7", "bf16"]
    space = SearchSpace.from_model(tiny_llama, formats)
    calib = Calibration(tiny_calib.batches, loss=next_token_loss)
    table = estimate(tiny_llama, space, calib, method=method)
    v = table.values
    assert np.isfinite(v).all()
    # pruning on top of the same grid adds error; 70% more than 50%
    assert (v[:, 1] > v[:, 0]).all() and (v[:, 2] > v[:, 1]).all()


def test_ilp_picks_sparse_formats_when_they_are_cheap(tiny_llama, tiny_calib) -> None:
    formats = ["int8-g32", "int4-g32", "int4-g32-s2:4"]
    space = SearchSpace.from_model(tiny_llama, formats)
    table = estimate(tiny_llama, space, tiny_calib, method="weight_error")
    sparse_bpw = space.formats[2].bits_per_weight((64, 64))
    assert sparse_bpw == 2 + 1 + 16 / 32 + 4 / 32  # b/2 + 1 + scales + zeros
    sol = solve(table, Budget.avg_bits(sparse_bpw + 0.3), solver="ilp")
    assert sol.success and sol.avg_bits <= sparse_bpw + 0.3
    picked = set(sol.choice)
    assert "int4-g32-s2:4" in picked
    brute = solve(table, Budget.avg_bits(sparse_bpw), solver="ilp")
    assert set(brute.choice) == {"int4-g32-s2:4"}
