"""End to end on a tiny random Llama: search -> plan -> apply -> evaluate -> restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bitalloc as ba
from bitalloc.evaluate import closest_uniform, evaluate_plan

FORMATS = ["int2-g32", "int3-g32", "int4-g32", "int8-g32"]


def test_search_respects_budget_and_ties(tiny_llama, tiny_calib) -> None:
    sol = ba.search(tiny_llama, tiny_calib, 3.5, formats=FORMATS)  # the default pipeline
    assert sol.status is ba.Status.FEASIBLE and sol.meta["solver"] == "bitalloc"
    assert sol.avg_bits <= 3.5 and ba.Budget.avg_bits(3.5).residual(sol) >= 0
    a = sol.assignment
    for layer in (0, 1):
        p = f"model.layers.{layer}"
        assert (
            a[f"{p}.self_attn.q_proj"] == a[f"{p}.self_attn.k_proj"] == a[f"{p}.self_attn.v_proj"]
        )
        assert a[f"{p}.mlp.gate_proj"] == a[f"{p}.mlp.up_proj"]
    assert len(set(sol.choice)) > 1, "a binding budget between formats should mix them"
    assert sol.meta["estimator"] == "weight_error" and sol.meta["backend"]["name"] == "gptq"
    exact = ba.search(tiny_llama, tiny_calib, 3.5, formats=FORMATS, solver="ilp")
    assert exact.status is ba.Status.OPTIMAL and exact.meta["solver"] == "ilp"


def test_staged_api_matches_one_shot(tiny_llama, tiny_calib) -> None:
    space = ba.SearchSpace.from_model(tiny_llama, FORMATS, tie="auto")
    table = ba.estimate(tiny_llama, space, tiny_calib)  # the one-shot defaults: auto + rtn
    staged = ba.solve(table, ba.Budget.avg_bits(3.5), solver="ilp")
    one_shot = ba.search(
        tiny_llama,
        tiny_calib,
        ba.Budget.avg_bits(3.5),
        formats=FORMATS,
        solver="ilp",
        backend="rtn",
    )
    assert staged.choice == one_shot.choice


def test_mixed_plan_beats_uniform_predicted_and_measured(tiny_llama, tiny_calib) -> None:
    space = ba.SearchSpace.from_model(tiny_llama, FORMATS, tie="auto")
    table = ba.estimate(tiny_llama, space, tiny_calib, "layer_error")
    uniform = ba.solve(table, 16.0, "uniform", format="int3-g32")
    mixed = ba.solve(table, ba.Budget.bytes(uniform.nbytes), "ilp")
    assert mixed.nbytes <= uniform.nbytes and mixed.objective <= uniform.objective


def test_infeasible_budget_is_a_result(tiny_llama, tiny_calib) -> None:
    sol = ba.search(tiny_llama, tiny_calib, 1.0, formats=FORMATS)
    assert sol.status is ba.Status.INFEASIBLE and not sol.success
    assert "minimum achievable 2.5625 avg bits" in sol.message


def test_evaluate_plan_reports_reference_plan_and_uniform(tiny_model_dir) -> None:
    model, tok = ba.models.load(str(tiny_model_dir))
    calib = ba.data.calibration(tok, n_samples=4, seq_len=32)
    sol = ba.search(model, calib, 3.75, formats=FORMATS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    uni = closest_uniform(sol)
    assert uni is not None and uni.choice[0] == "int3-g32" and uni.avg_bits <= sol.avg_bits
    res = evaluate_plan(model, tok, sol, n_windows=2, seq_len=32, calib=calib)  # its gptq
    assert set(res) == {"reference", "plan", "uniform"}
    assert res["reference"]["kl"] == 0 and res["plan"]["kl"] > 0
    assert res["uniform"]["format"] == "int3-g32"
    assert np.isfinite([res[k]["ppl"] for k in res]).all()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "model changed"


def test_bad_budget_and_table_types(tiny_llama) -> None:
    space = ba.SearchSpace.from_model(tiny_llama, FORMATS)
    table = ba.estimate(tiny_llama, space, None, "weight_error")
    with pytest.raises(TypeError, match="`budget` must be a Budget"):
        ba.solve(table, "3 bits")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`table` must be a SensitivityTable"):
        ba.solve(space, 3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`avg_bits` must be in"):
        ba.solve(table, -1.0)


def test_auto_estimator_resolution(tiny_llama, tiny_calib) -> None:
    from bitalloc.data import next_token_loss
    from bitalloc.search.api import auto_estimator

    with_loss = ba.Calibration(batches=tiny_calib.batches, loss=next_token_loss)
    assert auto_estimator(tiny_llama, with_loss) == "fisher"
    assert auto_estimator(tiny_llama, tiny_calib) == "weight_error"  # no loss given
    assert auto_estimator(tiny_llama, None) == "weight_error"
    assert auto_estimator(torch.nn.Linear(4, 4), with_loss) == "weight_error"  # not an LM
    space = ba.SearchSpace.from_model(tiny_llama, FORMATS)
    assert ba.estimate(tiny_llama, space, with_loss).estimator == "fisher"
