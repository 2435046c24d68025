"""Per-channel granularity: channel-slice units, per-slice costs that add up, apply per slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bitalloc import SearchSpace, Solution, Status, apply, estimate
from bitalloc.kernels import fake_quantize
from bitalloc.search.calibration import Calibration

FORMATS = ["int2-g32", "int4-g32", "int8-g32"]


def model_and_calib() -> tuple[nn.Module, Calibration]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 40)).eval()
    gen = torch.Generator().manual_seed(3)
    batches = tuple(torch.randn(2, 8, 64, generator=gen) for _ in range(2))
    return model, Calibration(batches=batches, forward=lambda m, b: m(b))


def test_channel_group_units() -> None:
    model, _ = model_and_calib()
    space = SearchSpace.from_model(model, FORMATS, channel_group=32)
    assert space.names == ("0[0:32]", "0[32:64]", "0[64:96]", "2[0:32]", "2[32:40]")
    assert space.units[4].shape == (8, 96) and space.units[4].channels == (32, 40)
    assert space.units[4].fqn == "2"
    assert space.numel == 64 * 96 + 96 * 40
    assert SearchSpace.from_dict(space.to_dict()) == space
    with pytest.raises(ValueError, match="cannot be combined"):
        SearchSpace.from_model(model, FORMATS, channel_group=32, tie="auto")
    with pytest.raises(ValueError, match="`channel_group` must be a positive int"):
        SearchSpace.from_model(model, FORMATS, channel_group=0)


@pytest.mark.parametrize("name", ["weight_error", "layer_error"])
def test_slice_costs_add_up_to_layer_costs(name: str) -> None:
    model, calib = model_and_calib()
    whole = estimate(model, SearchSpace.from_model(model, FORMATS), calib, name).values
    sliced = estimate(model, SearchSpace.from_model(model, FORMATS, channel_group=32), calib, name)
    per_layer = np.stack([sliced.values[:3].sum(axis=0), sliced.values[3:].sum(axis=0)])
    np.testing.assert_allclose(per_layer, whole, rtol=1e-5)


def test_apply_quantizes_each_slice_with_its_format_and_restores() -> None:
    model, _ = model_and_calib()
    space = SearchSpace.from_model(model, FORMATS, channel_group=32)
    w0 = model[0].weight.detach().clone()
    choice = ("int2-g32", "int8-g32", "int4-g32", "int4-g32", "int2-g32")
    handle = apply(model, Solution(space=space, choice=choice, status=Status.FEASIBLE))
    for (start, stop), (bits, gs) in zip(
        [(0, 32), (32, 64), (64, 96)], [(2, 32), (8, 32), (4, 32)]
    ):
        assert torch.equal(model[0].weight[start:stop], fake_quantize(w0[start:stop], bits, gs))
    handle.restore()
    assert torch.equal(model[0].weight, w0)
