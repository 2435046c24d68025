"""The default search pipeline on a tiny Llama: within budget, measured improvement kept,
seeded, time limit returns a plan with status LIMIT, bad input named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitalloc as ba
from bitalloc.search.calibration import Calibration
from bitalloc.search.pipeline import SCHEDULES, Effort, refine

FORMATS = ["int2-g32", "int3-g32", "int4-g32", "int8-g32"]


@pytest.fixture
def calib64() -> Calibration:
    gen = torch.Generator().manual_seed(3)
    return Calibration(
        batches=tuple(torch.randint(0, 320, (1, 64), generator=gen) for _ in range(6))
    )


def test_default_pipeline_stays_in_budget_and_keeps_the_best_measured(make_llama, calib64) -> None:
    model = make_llama(layers=3)
    sol = ba.search(model, calib64, 3.25, formats=FORMATS, effort="fast")
    assert sol.status is ba.Status.FEASIBLE and ba.Budget.avg_bits(3.25).residual(sol) >= 0
    info = sol.meta["pipeline"]
    assert info["effort"] == "fast"
    assert set(info["seconds"]) == {"measure", "anchors", "correction"}
    assert info["plans_measured"] >= SCHEDULES[Effort.FAST].correction_plans
    assert info["fitness"] <= info["measured"]["ilp"]
    assert info["correction"] and info["correction"][0]["n_plans"] >= 4
    # the fitness is the measured KL of the returned plan on the calibration tokens
    kl = ba.backends.KLEvaluator(model, calib64, sol.space, ba.backends.GptqBackend())
    assert kl(sol, tokens=info["fitness_tokens"]) == pytest.approx(info["fitness"], rel=1e-9)


def test_same_seed_same_plan(make_llama, calib64) -> None:
    model = make_llama(layers=2)
    a = ba.search(model, calib64, 3.25, formats=FORMATS, effort="fast", seed=1)
    b = ba.search(model, calib64, 3.25, formats=FORMATS, effort="fast", seed=1)
    assert (
        a.choice == b.choice and a.meta["pipeline"]["measured"] == b.meta["pipeline"]["measured"]
    )


def test_default_effort_runs_evopress_with_replay(make_llama, calib64) -> None:
    model = make_llama(layers=3)
    sol = ba.search(model, calib64, 3.25, formats=FORMATS)
    info = sol.meta["pipeline"]
    assert "evopress" in info["seconds"] and info["evopress"]["generations_run"] >= 1
    assert info["block_forwards_skipped"] > 0 and info["replay_fraction_run"] < 1.0
    # EvoPress starts from the best in-budget plan measured before it, never a worse one
    before = min(v for k, v in info["measured"].items() if k in ("ilp", "corrected"))
    assert info["evopress"]["start_fitness"] <= before * (1 + 1e-9)
    assert info["fitness"] <= info["evopress"]["start_fitness"] * (1 + 1e-9)


def test_a_misleading_table_never_beats_the_rules_measured_beside_it(make_llama, calib64) -> None:
    """A table that calls every low-bit format harmless puts all units at int2; the race also
    measures the largest uniform format that fits and NNCF's rule, and keeps the best."""
    import numpy as np

    from bitalloc.search.table import SensitivityTable

    model = make_llama(layers=2)
    space = ba.SearchSpace.from_model(model, FORMATS)
    bits = np.array([f.bits for f in space.formats], float)
    table = SensitivityTable(space, np.where(space.mask, bits[None, :], np.inf), "misleading")
    uniform = ba.Solution(
        space=space, choice=("int4-g32",) * len(space), status=ba.Status.FEASIBLE
    )
    budget = ba.Budget.bytes(uniform.nbytes)
    sol = refine(model, calib64, table, budget, backend="rtn", effort="fast")
    info = sol.meta["pipeline"]
    assert set(info["measured"]) >= {"ilp", "uniform"}
    assert info["measured"]["ilp"] > info["measured"]["uniform"]  # the table's optimum: int2
    assert info["fitness"] <= info["measured"]["uniform"] and budget.residual(sol) >= 0
    kl = ba.backends.KLEvaluator(model, calib64, space, ba.backends.RtnBackend())
    assert kl(sol, tokens=info["fitness_tokens"]) <= kl(uniform, tokens=info["fitness_tokens"])


def test_time_limit_too_small_returns_the_exact_optimum_with_status_limit(
    tiny_llama, calib64
) -> None:
    sol = ba.search(tiny_llama, calib64, 3.25, formats=FORMATS, time_limit=0)
    exact = ba.search(tiny_llama, calib64, 3.25, formats=FORMATS, solver="ilp")
    assert sol.status is ba.Status.LIMIT and sol.success
    assert "time limit" in sol.message and sol.choice == exact.choice


def test_bad_effort_and_time_limit_are_named(tiny_llama, calib64) -> None:
    with pytest.raises(ValueError, match="`effort` must be one of fast, default, max"):
        ba.search(tiny_llama, calib64, 3.25, formats=FORMATS, effort="turbo")
    with pytest.raises(ValueError, match="`time_limit` must be a number of seconds >= 0"):
        ba.search(tiny_llama, calib64, 3.25, formats=FORMATS, time_limit=-1)
    space = ba.SearchSpace.from_model(tiny_llama, FORMATS)
    table = ba.estimate(tiny_llama, space, calib64, "weight_error")
    with pytest.raises(ValueError, match="`effort`"):
        refine(tiny_llama, calib64, table, ba.Budget.avg_bits(3.0), backend="rtn", effort="x")


def test_backends_that_need_calibration_name_it(tiny_llama) -> None:
    with pytest.raises(ValueError, match="`calib` is required for the gptq backend"):
        ba.search(tiny_llama, None, 3.25, formats=FORMATS, backend="gptq")
    rtn = ba.backends.RtnBackend(grid="search")
    with pytest.raises(ValueError, match="rtn backend with grid='search'.*grid='minmax'"):
        ba.search(tiny_llama, None, 3.25, formats=FORMATS, backend=rtn)
    data_free = ba.search(tiny_llama, None, 3.25, formats=FORMATS)  # auto: rtn minmax, ilp
    assert data_free.meta["backend"]["name"] == "rtn" and data_free.meta["solver"] == "ilp"


def test_nan_activations_and_short_calibration_name_the_layer() -> None:
    model = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    bad = torch.randn(64, 32)
    bad[5, 3] = float("inf")
    calib = Calibration(batches=(bad,), forward=lambda m, b: m(b))
    with pytest.raises(ValueError, match="non-finite .* enter layer '0'"):
        ba.search(
            model, calib, 4.0, formats=FORMATS, estimator="weight_error", backend="rtn", tie=None
        )
    short = Calibration(batches=(torch.randn(3, 32),), forward=lambda m, b: m(b))
    with pytest.raises(ValueError, match="layer '0' saw 3 calibration tokens"):
        ba.search(
            model, short, 4.0, formats=FORMATS, estimator="weight_error", backend="rtn", tie=None
        )
