"""Contract every registered estimator satisfies; subclass :class:`EstimatorContract` to run it.

Parametrised over ``ESTIMATORS.names()``, so a newly registered estimator is tested
automatically, on a small MLP with a calibration loss (the gradient estimators need one):
one finite, non-negative cost per allowed (unit, format), non-increasing in bits; ``inf``
where the space masks a format; the same table twice; the model bit-exactly unchanged; and
the table's meta naming the estimator's options and the backend that built ``W_hat``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from bitalloc import SearchSpace, estimate
from bitalloc.search.calibration import Calibration
from bitalloc.sensitivity import ESTIMATORS, Estimator

FORMATS = ["int2-g32", "int3-g32", "int4-g32", "int8-g32"]


def toy_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 32)
    ).eval()


def mlp_calib(n: int = 3) -> Calibration:
    gen = torch.Generator().manual_seed(5)
    return Calibration(
        batches=tuple(torch.randn(4, 16, 64, generator=gen) for _ in range(n)),
        forward=lambda m, b: m(b),
        loss=lambda out, b: out.pow(2).mean(),  # for the gradient-based estimators
    )


class EstimatorContract:
    """Properties every registered estimator must have."""

    @pytest.fixture(params=ESTIMATORS.names())
    def name(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    def test_protocol_and_options(self, name: str) -> None:
        est = ESTIMATORS.get(name)
        assert isinstance(est, Estimator) and type(est).name == name
        assert isinstance(type(est).needs_calibration, bool)
        assert dataclasses.is_dataclass(est)
        assert ESTIMATORS.get(name, **dataclasses.asdict(est)) == est

    def test_shape_finite_and_monotone_in_bits(self, name: str) -> None:
        model, calib = toy_mlp(), mlp_calib()
        space = SearchSpace.from_model(model, FORMATS)
        table = estimate(model, space, calib, name)
        assert table.values.shape == (3, 4)
        assert np.isfinite(table.values).all() and (table.values >= 0).all()
        assert (np.diff(table.values, axis=1) <= 0).all(), "more bits must not cost more"
        assert table.estimator == name and "model_fingerprint" in table.meta

    def test_deterministic(self, name: str) -> None:
        model, calib = toy_mlp(), mlp_calib()
        space = SearchSpace.from_model(model, FORMATS)
        a = estimate(model, space, calib, name).values
        b = estimate(model, space, calib, name).values
        assert np.array_equal(a, b)

    def test_masked_formats_are_inf(self, name: str) -> None:
        model = nn.Sequential(nn.Linear(48, 8), nn.Linear(8, 4)).eval()
        calib = Calibration(
            batches=(torch.randn(16, 48),),  # >= 16 tokens for the grid search statistics
            forward=lambda m, b: m(b),
            loss=lambda o, b: o.square().mean(),
        )
        space = SearchSpace.from_model(model, ["int4-g16", "int8-pc"])
        values = estimate(model, space, calib, name).values
        assert (
            np.isinf(values[1, 0]) and np.isfinite(values[0]).all() and np.isfinite(values[1, 1])
        )

    def test_model_unchanged_and_meta_names_options_and_backend(self, name: str) -> None:
        model, calib = toy_mlp(), mlp_calib()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        flags = [p.requires_grad for p in model.parameters()]
        table = estimate(model, SearchSpace.from_model(model, FORMATS), calib, name)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert [p.requires_grad for p in model.parameters()] == flags and not model.training
        assert table.meta["options"] == dataclasses.asdict(ESTIMATORS.get(name))
        assert table.meta["backend"]["name"] == "rtn"
