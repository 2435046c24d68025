"""Slow end-to-end runs on the real SmolLM2-135M and MiniLM (run by `make test` and .ci/run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bitalloc as ba
from bitalloc.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return ba.models.load("smollm2-135m")


def test_search_apply_eval_on_smollm2(smollm2) -> None:
    from bitalloc.evaluate import evaluate_plan

    model, tok = smollm2
    calib = ba.data.calibration(tok, n_samples=4, seq_len=128)
    sol = ba.search(model, calib, 3.0, effort="fast")
    # the measured pipeline's plan is the best it measured, not a proven optimum of the table
    assert sol.status in (ba.Status.OPTIMAL, ba.Status.FEASIBLE) and sol.avg_bits <= 3.0
    assert sol.meta["pipeline"]["effort"] == "fast"
    assert len(sol.space) == 210 and len(sol.space.tie_groups()) == 60  # qkv + gate/up x 30
    res = evaluate_plan(model, tok, sol, n_windows=2, seq_len=256, calib=calib)
    assert res["uniform"]["format"] == "int2-g64"
    # the mixed plan spends its extra 0.7 bits where they matter: far better than uniform 2-bit
    assert res["plan"]["kl"] < 0.8 * res["uniform"]["kl"]
    assert res["reference"]["ppl"] < res["plan"]["ppl"] < res["uniform"]["ppl"]


def test_cli_search_and_eval_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.json"
    assert (
        main(
            [
                "search",
                "--model",
                "smollm2-135m",
                "--avg-bits",
                "3.0",
                "--n-samples",
                "2",
                "--seq-len",
                "128",
                "--out",
                str(plan),
                "-q",
            ]
        )
        == 0
    )
    assert json.loads(plan.read_text())["meta"]["model"] == "smollm2-135m"
    capsys.readouterr()
    assert main(["eval", str(plan), "--json", "--windows", "1", "--seq-len", "128", "-q"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["plan"]["avg_bits"] <= 3.0 and res["plan"]["kl"] < res["uniform"]["kl"]


def test_minilm_search_and_embedding_fidelity(tmp_path: Path, capsys) -> None:
    plan = tmp_path / "minilm.json"
    assert (
        main(
            [
                "search",
                "--model",
                "minilm-l6",
                "--avg-bits",
                "3.5",
                "--n-samples",
                "4",
                "--seq-len",
                "128",
                "--out",
                str(plan),
                "-q",
            ]
        )
        == 0
    )
    data = json.loads(plan.read_text())
    assert len(data["assignment"]) == 37  # 6 blocks x 6 + pooler and data["avg_bits"] <= 3.5
    capsys.readouterr()
    assert main(["eval", str(plan), "--json", "-q"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["reference"]["fidelity"] == 1.0
    assert res["uniform"]["format"] == "int3-g64"
    assert 0.5 < res["uniform"]["fidelity"] < res["plan"]["fidelity"] < 1.0


def test_gptq_packed_checkpoint_on_smollm2(smollm2, tmp_path: Path) -> None:
    """Real model, first two decoder blocks: GPTQ codes packed to safetensors, reloaded into a
    fresh copy; weight bytes == plan bytes, logits == the GPTQ fake-quantized model's, and
    GPTQ's held-out KL below RTN's on the same plan."""
    import copy

    import torch

    from bitalloc.backends.packed import checkpoint_nbytes, load_packed, save_packed
    from bitalloc.data import evaluate_lm, windows

    model, tok = smollm2
    calib = ba.data.calibration(tok, n_samples=4, seq_len=128)
    space = ba.SearchSpace.from_model(
        model,
        ["int2-g64", "int3-g64", "int4-g64"],
        include=[r"re:model\.layers\.[01]\..*"],
        example_input=calib.batches[0],
    )
    assert len(space) == 14
    table = ba.estimate(model, space, calib, "weight_error")
    sol = ba.solve(table, 3.0, "ilp")
    path = tmp_path / "packed.safetensors"
    save_packed(model, sol, path, quantizer="gptq", calib=calib)
    assert checkpoint_nbytes(path) == sol.nbytes
    packed, fake, rtn = (copy.deepcopy(model) for _ in range(3))
    load_packed(packed, path)
    ba.apply(fake, sol, "gptq", calib=calib)
    ba.apply(rtn, sol, "rtn")
    win = windows(tok, "wikipedia-heldout", 128, 2)
    with torch.no_grad():
        a, b = packed(win).logits, fake(win).logits
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    res = evaluate_lm(model, {"gptq": fake, "rtn": rtn}, win)
    assert res["gptq"].kl < res["rtn"].kl
