"""The estimator contract (tests/contracts/estimator.py) over every registered estimator, and
layer_error against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from contracts.estimator import FORMATS, EstimatorContract, mlp_calib, toy_mlp
from torch import nn

from bitalloc import SearchSpace, estimate
from bitalloc.backends.rtn import RtnBackend
from bitalloc.kernels import fake_quantize
from bitalloc.search.calibration import Calibration
from bitalloc.search.table import SensitivityTable


class TestEstimatorContract(EstimatorContract):
    """tests/contracts/estimator.py over every registered estimator."""


def test_layer_error_equals_direct_output_error() -> None:
    model, calib = toy_mlp(), mlp_calib()
    space = SearchSpace.from_model(model, FORMATS)
    minmax = RtnBackend(grid="minmax")  # the direct computation uses fake_quantize's grid
    raw = estimate(model, space, calib, "layer_error", normalize=False, backend=minmax)
    nmse = estimate(model, space, calib, "layer_error", backend=minmax)
    # direct: mean over tokens of ||(Q(W) - W) x||^2 at the first layer
    x = torch.cat([b.reshape(-1, 64) for b in calib.batches]).double()
    w = model[0].weight.detach()
    energy = float((x @ w.double().T).pow(2).sum())
    for j, (bits, gs) in enumerate([(2, 32), (3, 32), (4, 32), (8, 32)]):
        dw = (fake_quantize(w, bits, gs) - w).double()
        direct = (x @ dw.T).pow(2).sum(dim=1)
        assert raw.values[0, j] == pytest.approx(float(direct.mean()), rel=1e-4)
        assert nmse.values[0, j] == pytest.approx(float(direct.sum()) / energy, rel=1e-4)


def test_layer_error_shares_hessian_of_fused_inputs(tiny_llama, tiny_calib) -> None:
    from bitalloc.nn.units import unit_modules
    from bitalloc.sensitivity.layer_error import collect_hessians

    space = SearchSpace.from_model(tiny_llama, FORMATS)
    modules = unit_modules(tiny_llama, space.units)
    hess, tokens = collect_hessians(tiny_llama, modules, tiny_calib)
    q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    assert hess[q] is hess[k]
    assert hess[q] is not hess["model.layers.0.self_attn.o_proj"]
    assert tokens[q] == 4 * 32


def test_weight_error_is_data_free_and_exact() -> None:
    model = toy_mlp()
    space = SearchSpace.from_model(model, ["int3-g32"])
    raw = estimate(model, space, None, "weight_error", normalize=False)
    rel = estimate(model, space, None, "weight_error")
    w = model[2].weight.detach()
    err = float((fake_quantize(w, 3, 32) - w).pow(2).sum())
    assert raw.values[1, 0] == pytest.approx(err)
    assert rel.values[1, 0] == pytest.approx(err / float(w.pow(2).sum()))


def test_layer_error_needs_calibration() -> None:
    model = toy_mlp()
    space = SearchSpace.from_model(model, FORMATS)
    with pytest.raises(ValueError, match="needs `calib`"):
        estimate(model, space, None, "layer_error")


def test_nan_activations_are_reported() -> None:
    model = toy_mlp()
    space = SearchSpace.from_model(model, FORMATS)
    bad = torch.randn(2, 8, 64)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        estimate(
            model, space, Calibration(batches=(bad,), forward=lambda m, b: m(b)), "layer_error"
        )


def test_space_mismatch_is_reported() -> None:
    space = SearchSpace.from_model(toy_mlp(), FORMATS)
    other = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 32))
    with pytest.raises(ValueError, match="shape"):
        estimate(other, space, None, "weight_error")


def test_unknown_estimator_and_option() -> None:
    model = toy_mlp()
    space = SearchSpace.from_model(model, FORMATS)
    with pytest.raises(ValueError, match="unknown estimator 'fishr'; available"):
        estimate(model, space, None, "fishr")
    with pytest.raises(ValueError, match="unknown option"):
        estimate(model, space, None, "weight_error", probes=3)


def test_cache_hit_skips_recompute(tmp_path, monkeypatch) -> None:
    model, calib = toy_mlp(), mlp_calib()
    space = SearchSpace.from_model(model, FORMATS)
    first = estimate(model, space, calib, "layer_error", cache_dir=tmp_path)
    assert len(list((tmp_path / "tables").glob("*.npz"))) == 1
    from bitalloc.sensitivity.layer_error import LayerErrorEstimator

    def boom(*a, **k):
        raise AssertionError("recomputed despite cache")

    monkeypatch.setattr(LayerErrorEstimator, "estimate", boom)
    again = estimate(model, space, calib, "layer_error", cache_dir=tmp_path)
    assert np.array_equal(first.values, again.values)
    with pytest.raises(AssertionError, match="recomputed"):  # other calibration -> miss
        estimate(model, space, mlp_calib(2), "layer_error", cache_dir=tmp_path)


def test_broken_or_foreign_cache_entries_are_recomputed(tmp_path) -> None:
    """Issue 11 D6: a truncated entry, or another model's table under the key, is not used."""
    model, calib = toy_mlp(), mlp_calib()
    space = SearchSpace.from_model(model, FORMATS)
    first = estimate(model, space, calib, "layer_error", cache_dir=tmp_path)
    (path,) = (tmp_path / "tables").glob("*.npz")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    again = estimate(model, space, calib, "layer_error", cache_dir=tmp_path)
    assert (
        np.array_equal(first.values, again.values) and path.read_bytes() != good[: len(good) // 2]
    )

    other = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 16))
    other_space = SearchSpace.from_model(other, FORMATS)
    foreign = estimate(other, other_space, calib, "layer_error", cache_dir=tmp_path / "o")
    foreign.save(path)  # another model's table placed under this key
    fresh = estimate(model, space, calib, "layer_error", cache_dir=tmp_path)
    assert fresh.space == space and np.array_equal(fresh.values, first.values)
    assert SensitivityTable.load(path).space == space  # the entry was replaced
