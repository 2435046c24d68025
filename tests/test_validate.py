"""Estimator validation: random feasible plans, measured KL, rank correlations."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bitalloc as ba
from bitalloc.cli import main
from bitalloc.validate import random_plans, validate_estimator

FORMATS = ["int2-g32", "int3-g32", "int4-g32", "int8-g32"]


@pytest.fixture
def table(tiny_llama, tiny_calib):
    space = ba.SearchSpace.from_model(tiny_llama, FORMATS, tie="auto")
    return ba.estimate(tiny_llama, space, tiny_calib, "layer_error")


def test_random_plans_are_feasible_diverse_and_seeded(table) -> None:
    plans = random_plans(table, [3.0, 4.0], 10, seed=3)
    assert all(p.avg_bits <= (3.0 if i % 2 == 0 else 4.0) for i, p in enumerate(plans))
    assert len({p.choice for p in plans}) >= 4
    again = random_plans(table, [3.0, 4.0], 10, seed=3)
    assert [p.choice for p in plans] == [p.choice for p in again]
    with pytest.raises(ValueError, match="below this space's minimum"):
        random_plans(table, [1.0], 2)
    with pytest.raises(ValueError, match="`n_plans` must be >= 2"):
        random_plans(table, [3.0], 1)


def test_validate_estimator_reports_correlations(tiny_llama, tiny_calib, table) -> None:
    import torch

    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    win = torch.cat([b for b in tiny_calib.batches])[:2]
    report = validate_estimator(tiny_llama, table, win, budgets=(3.0, 4.5), n_plans=8)
    assert len(report.plans) == 8 and -1 <= report.spearman <= 1 and -1 <= report.kendall <= 1
    assert all(np.isfinite([p.kl, p.ppl, p.predicted]).all() for p in report.plans)
    # plans at 4.5 bits are measured better than plans at 3 bits on average
    kl = {b: np.mean([p.kl for p in report.plans if p.budget_bits == b]) for b in (3.0, 4.5)}
    assert kl[4.5] < kl[3.0]
    assert all(torch.equal(v, before[k]) for k, v in tiny_llama.state_dict().items())


def test_cli_validate_json(tiny_model_dir, capsys) -> None:
    args = [
        "validate",
        "--model",
        str(tiny_model_dir),
        "--formats",
        ",".join(FORMATS),
        "--n-plans",
        "4",
        "--n-samples",
        "2",
        "--seq-len",
        "32",
        "--windows",
        "2",
        "--budgets",
        "3.0,4.0",
        "--no-cache",
        "--json",
        "-q",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["estimator"] == "fisher" and len(out["plans"]) == 4
    assert main([*args[:-3], "--budgets", "3,x", "-q"]) == 2
    assert "--budgets must be comma-separated numbers" in capsys.readouterr().err


def test_validate_with_a_correction_ranks_the_same_plans_again(tiny_llama, tiny_calib, table):
    """``correct=K`` fits the correction to K other plans (none of them a validation plan)
    and re-ranks the validation plans; the fitted prediction is the correction's own."""
    import torch

    win = torch.cat([b for b in tiny_calib.batches])[:2]
    report = validate_estimator(
        tiny_llama, table, win, budgets=(3.0, 4.5), n_plans=6, correct=6, seed=1
    )
    c = report.corrected
    assert c is not None and c.fit_plans == 6 and -1 <= c.spearman <= 1
    assert c.correction["n_plans"] == 6 and c.correction["kind"] in (
        "scale",
        "bits",
        "type",
        "bits+type",
    )
    validation = {p.choice for p in random_plans(table, (3.0, 4.5), 6, seed=1)}
    fitting = {p.choice for p in random_plans(table, (3.0, 4.5), 6, seed=2)}
    assert len(validation) >= 3 and validation != fitting
    plain = validate_estimator(tiny_llama, table, win, budgets=(3.0, 4.5), n_plans=6, seed=1)
    assert plain.corrected is None
    assert [p.kl for p in plain.plans] == pytest.approx([p.kl for p in report.plans], rel=1e-6)
    with pytest.raises(ValueError, match=">= 4 fitting plans"):
        validate_estimator(tiny_llama, table, win, n_plans=4, correct=2)
