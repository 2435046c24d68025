"""fisher, output_fisher and hessian_trace against hand computations; slices; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitalloc import SearchSpace, estimate
from bitalloc.backends.rtn import RtnBackend
from bitalloc.kernels import fake_quantize
from bitalloc.search.calibration import Calibration
from bitalloc.search.formats import parse_formats
from bitalloc.search.space import Unit
from bitalloc.sensitivity.base import monotone

# The hand computations below quantize with the minmax grid (fake_quantize without
# importance), so the tables are priced with the minmax rtn backend.
MINMAX = RtnBackend(grid="minmax")


def estimate_minmax(*args, **options):  # noqa: ANN002, ANN003, ANN201
    return estimate(*args, backend=MINMAX, **options)


FORMATS = ["int2-g8", "int3-g8", "int4-g8", "int8-g8"]
SPEC = [(2, 8), (3, 8), (4, 8), (8, 8)]
GRADIENT = ["fisher", "output_fisher", "hessian_trace"]


def linear_and_calib(n: int = 3) -> tuple[nn.Module, Calibration]:
    """One Linear(24 -> 32) at module "0", an MSE loss against fixed random targets."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 32)).eval()
    gen = torch.Generator().manual_seed(7)
    xs = [torch.randn(5, 24, generator=gen) for _ in range(n)]
    target = torch.randn(5, 32, generator=gen)
    return model, Calibration(
        batches=tuple(xs), forward=lambda m, b: m(b), loss=lambda o, b: F.mse_loss(o, target)
    )


def deltas(w: torch.Tensor) -> list[torch.Tensor]:
    return [fake_quantize(w, bits, gs) - w for bits, gs in SPEC]


def test_fisher_matches_hand_computation() -> None:
    model, calib = linear_and_calib()
    table = estimate_minmax(model, SearchSpace.from_model(model, FORMATS), calib, "fisher")
    w = model[0].weight
    grads = [torch.autograd.grad(calib.loss(model(x), x), w)[0] for x in calib.batches]
    fisher = torch.stack(grads).square().mean(0)
    w = w.detach()
    expected = [0.5 * float((fisher * d.square()).sum()) for d in deltas(w)]
    np.testing.assert_allclose(table.values[0], expected, rtol=1e-5)
    assert table.meta["batches"] == 3
    two = estimate_minmax(
        model, SearchSpace.from_model(model, FORMATS), calib, "fisher", max_batches=2
    )
    assert two.meta["batches"] == 2 and not np.allclose(two.values, table.values)


def test_output_fisher_matches_hand_computation() -> None:
    model, calib = linear_and_calib()
    table = estimate_minmax(model, SearchSpace.from_model(model, FORMATS), calib, "output_fisher")
    w = model[0].weight.detach()
    raw = np.zeros(len(SPEC))
    for x in calib.batches:
        y = model(x)
        (g,) = torch.autograd.grad(calib.loss(y, x), y)
        raw += [float((g.square() * (x @ d.T).square()).sum()) for d in deltas(w)]
    expected = np.minimum.accumulate(raw / len(calib.batches))  # formats sorted by bits
    np.testing.assert_allclose(table.values[0], expected, rtol=1e-5)


def test_monotone_takes_the_min_over_narrower_formats() -> None:
    space = SearchSpace.from_model(nn.Sequential(nn.Linear(16, 4)), ["int8-g8", "int2-g8"])
    assert space.keys == ("int8-g8", "int2-g8")  # column order is not bit order
    # int8 scored above int2 is clipped down to int2's score; a monotone row is left alone
    np.testing.assert_array_equal(monotone(np.array([[3.0, 1.0]]), space), [[1.0, 1.0]])
    np.testing.assert_array_equal(monotone(np.array([[1.0, 3.0]]), space), [[1.0, 3.0]])


def mlp_and_calib() -> tuple[nn.Module, Calibration]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8)).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 12, generator=gen)
    labels = torch.randint(0, 8, (64,), generator=gen)
    calib = Calibration(
        batches=(x,), forward=lambda m, b: m(b), loss=lambda o, b: F.cross_entropy(o, labels)
    )
    return model, calib


def exact_traces(model: nn.Module, calib: Calibration) -> list[float]:
    x = calib.batches[0]
    out = []
    for idx in (0, 2):
        w0 = model[idx].weight.detach()

        def loss_of(flat: torch.Tensor, idx: int = idx, shape: tuple = w0.shape) -> torch.Tensor:
            params = {f"{idx}.weight": flat.reshape(shape)}
            return calib.loss(torch.func.functional_call(model, params, (x,)), x)

        h = torch.autograd.functional.hessian(loss_of, w0.reshape(-1))
        out.append(float(torch.diagonal(h).sum()))
    return out


def test_hutchinson_trace_matches_exact_hessian_trace() -> None:
    model, calib = mlp_and_calib()
    space = SearchSpace.from_model(model, ["int4-g4"])
    table = estimate_minmax(model, space, calib, "hessian_trace", max_probes=200, tol=0.0)
    assert table.meta["probes"] == 200
    got = [table.meta["traces"][n] for n in space.names]
    exact = exact_traces(model, calib)
    assert min(exact) > 0
    np.testing.assert_allclose(got, exact, rtol=0.1)
    for i, (u, idx) in enumerate(zip(space.units, (0, 2))):  # cost = Tr/n * ||dW||^2
        w = model[idx].weight.detach()
        err = float((fake_quantize(w, 4, 4) - w).square().sum())
        assert table.values[i, 0] == pytest.approx(got[i] / u.numel * err, rel=1e-5)
    again = estimate_minmax(model, space, calib, "hessian_trace", max_probes=200, tol=0.0)
    other = estimate_minmax(model, space, calib, "hessian_trace", max_probes=200, tol=0.0, seed=1)
    assert np.array_equal(again.values, table.values)
    assert not np.array_equal(other.values, table.values)


def test_hutchinson_stops_at_tolerance() -> None:
    model, calib = mlp_and_calib()
    space = SearchSpace.from_model(model, ["int4-g4"])
    loose = estimate_minmax(model, space, calib, "hessian_trace", max_probes=50, tol=0.5).meta
    assert loose["probes"] < 50 and loose["rel_change"] < 0.5
    assert loose["probe_time_s"] >= 0 and loose["batches"] == 1
    assert set(loose["trace_stderr"]) == set(space.names)
    with pytest.raises(ValueError, match="min_probes"):
        estimate_minmax(model, space, calib, "hessian_trace", max_probes=2, min_probes=3)


def test_negative_trace_is_clamped_and_listed(caplog) -> None:
    model, calib = linear_and_calib()
    concave = Calibration(
        batches=calib.batches, forward=calib.forward, loss=lambda o, b: -o.square().mean()
    )
    table = estimate_minmax(
        model, SearchSpace.from_model(model, FORMATS), concave, "hessian_trace"
    )
    assert table.meta["traces"]["0"] < 0 and table.meta["negative_trace_units"] == ["0"]
    assert (table.values == 0).all() and "clamped to 0" in caplog.text


def sliced_space(formats: list[str]) -> SearchSpace:
    keys = tuple(f.key for f in parse_formats(formats))
    units = tuple(
        Unit(name=f"0[{a}:{b}]", shape=(16, 24), allowed=keys, channels=(a, b))
        for a, b in ((0, 16), (16, 32))
    )
    return SearchSpace(units=units, formats=parse_formats(formats))


@pytest.mark.parametrize("name", GRADIENT)
def test_channel_slices_add_up_to_the_layer(name: str) -> None:
    model, calib = linear_and_calib()
    whole = estimate_minmax(model, SearchSpace.from_model(model, FORMATS), calib, name)
    sliced = estimate_minmax(model, sliced_space(FORMATS), calib, name)
    if name != "hessian_trace":
        np.testing.assert_allclose(sliced.values.sum(axis=0), whole.values[0], rtol=1e-5)
        return
    # each slice has its own trace; same seed -> same probes -> slice traces add up
    traces = sliced.meta["traces"]
    assert traces["0[0:16]"] + traces["0[16:32]"] == pytest.approx(whole.meta["traces"]["0"])
    w = model[0].weight.detach()
    for i, (a, b) in enumerate(((0, 16), (16, 32))):
        err = float((fake_quantize(w[a:b], 2, 8) - w[a:b]).square().sum())
        want = traces[f"0[{a}:{b}]"] / (16 * 24) * err
        assert sliced.values[i, 0] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", GRADIENT)
def test_no_loss_is_reported(name: str) -> None:
    model, calib = linear_and_calib()
    no_loss = Calibration(batches=calib.batches, forward=lambda m, b: m(b))
    with pytest.raises(ValueError, match="calibration gives no loss: pass Calibration"):
        estimate_minmax(model, SearchSpace.from_model(model, FORMATS), no_loss, name)


@pytest.mark.parametrize("name", GRADIENT)
def test_frozen_training_model_works_and_is_restored(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 32), nn.Dropout(0.5), nn.Linear(32, 8))
    gen = torch.Generator().manual_seed(3)
    calib = Calibration(
        batches=(torch.randn(6, 24, generator=gen),),
        forward=lambda m, b: m(b),
        loss=lambda o, b: o.square().mean(),
    )
    space = SearchSpace.from_model(model, FORMATS)
    reference = estimate_minmax(model.eval(), space, calib, name).values
    model.train()
    model[2].bias.requires_grad_(True)
    for p in (model[0].weight, model[0].bias, model[2].weight):
        p.requires_grad_(False)
    values = estimate_minmax(model, space, calib, name).values
    np.testing.assert_array_equal(values, reference)  # evaluated in eval mode: dropout off
    assert model.training and model[1].training
    flags = [p.requires_grad for p in model.parameters()]
    assert flags == [False, False, False, True]
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", GRADIENT)
def test_nan_input_raises_instead_of_nan_table(name: str) -> None:
    model, calib = linear_and_calib()
    bad = calib.batches[0].clone()
    bad[0, 0] = float("nan")
    nan_calib = Calibration(batches=(bad,), forward=calib.forward, loss=calib.loss)
    with pytest.raises(ValueError, match="non-finite loss on calibration batch 0"):
        estimate_minmax(model, SearchSpace.from_model(model, FORMATS), nan_calib, name)
    flags = [p.requires_grad for p in model.parameters()]
    assert flags == [True, True]


@pytest.mark.parametrize("name", ["fisher", "output_fisher"])
def test_nan_gradient_is_reported(name: str) -> None:
    model, calib = linear_and_calib()
    # sqrt at 0: the loss is 0 (finite) but its gradient is 0 * inf = NaN
    sqrt0 = Calibration(
        batches=calib.batches,
        forward=calib.forward,
        loss=lambda o, b: (o - o.detach()).square().sum().sqrt(),
    )
    with pytest.raises(ValueError, match="non-finite gradient for unit '0'"):
        estimate_minmax(model, SearchSpace.from_model(model, FORMATS), sqrt0, name)


def test_llama_next_token_loss_and_sdpa_hint(make_llama, tiny_calib) -> None:
    from bitalloc.data.tokens import next_token_loss

    calib = Calibration(batches=tiny_calib.batches[:2], loss=next_token_loss)
    for impl in ("sdpa", "eager"):
        model = make_llama()
        model.config._attn_implementation = impl
        space = SearchSpace.from_model(model, ["int4-g32", "int8-g32"], tie="auto")
        if impl == "sdpa":
            with pytest.raises(ValueError, match='attn_implementation="eager"'):
                estimate_minmax(model, space, calib, "hessian_trace", max_probes=2)
            with pytest.raises(ValueError, match="calibration gives no loss"):
                estimate_minmax(model, space, tiny_calib, "fisher")
            continue
        for name, opts in zip(GRADIENT, ({}, {}, {"max_probes": 2})):
            values = estimate_minmax(model, space, calib, name, **opts).values
            assert np.isfinite(values).all() and (values >= 0).all()
