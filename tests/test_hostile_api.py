"""Hostile input through the Python API (issue 11 D18): clear errors naming what is wrong."""

from __future__ import annotations

import pytest
import torch

import bitalloc as ba
from bitalloc.data.tokens import next_token_loss
from bitalloc.search.calibration import Calibration

FORMATS = ["int4-g32", "int8-pc"]


@pytest.mark.parametrize("shape", [(1, 0), (0, 8), (8,)])
def test_empty_or_flat_token_batches_are_refused(shape) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=r"`calib` batch 0 has token ids of shape"):
        Calibration(batches=(torch.zeros(shape, dtype=torch.long),))


def test_one_token_batches_say_fewer_than_2_tokens(tiny_llama) -> None:  # noqa: ANN001
    space = ba.SearchSpace.from_model(tiny_llama, FORMATS)
    calib = Calibration(batches=(torch.ones(2, 1, dtype=torch.long),), loss=next_token_loss)
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        ba.estimate(tiny_llama, space, calib, "fisher")


@pytest.mark.parametrize("backend", ["rtn", "packed"])
def test_nan_weights_are_refused_naming_the_unit_once(tiny_llama, backend) -> None:  # noqa: ANN001
    space = ba.SearchSpace.from_model(tiny_llama, FORMATS, tie=None)
    values = torch.tensor([[2.0, 1.0]] * len(space), dtype=torch.float64).numpy()
    table = ba.SensitivityTable(space, values, "test")
    plan = ba.solve(table, ba.Budget.avg_bits(6.0))
    name = space.units[0].fqn
    weight = dict(tiny_llama.named_modules())[name].weight
    with torch.no_grad():
        weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    with pytest.raises(ValueError, match="non-finite") as err:
        ba.apply(tiny_llama, plan, backend)
    assert str(err.value).count(name) == 1
    after = tiny_llama.state_dict()
    for k in before:  # nothing was touched (NaN != NaN, so compare with equal_nan)
        assert torch.allclose(before[k], after[k], rtol=0, atol=0, equal_nan=True), k


@pytest.mark.parametrize("method", ["fisher", "weight_error", "layer_error", "kl_probe"])
def test_nan_weights_are_named_before_any_estimator_runs(tiny_llama, method) -> None:  # noqa: ANN001
    """Issue 11 D18: a NaN weight is reported as such, naming its layer once, not as a NaN
    loss or NaN activations further down the model."""
    space = ba.SearchSpace.from_model(tiny_llama, FORMATS)
    name = space.units[1].fqn
    with torch.no_grad():
        dict(tiny_llama.named_modules())[name].weight[3, 2] = float("inf")
    gen = torch.Generator().manual_seed(0)
    calib = Calibration(
        batches=(torch.randint(0, 300, (1, 16), generator=gen),), loss=next_token_loss
    )
    with pytest.raises(ValueError, match="non-finite") as err:
        ba.estimate(tiny_llama, space, calib, method)
    assert str(err.value).count(name) == 1 and "no estimator can score them" in str(err.value)
