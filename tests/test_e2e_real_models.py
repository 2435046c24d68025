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
    sol = ba.search(model, calib, 3.0)
    assert sol.status is ba.Status.OPTIMAL and sol.avg_bits <= 3.0
    assert len(sol.space) == 210 and len(sol.space.tie_groups()) == 60  # qkv + gate/up x 30
    res = evaluate_plan(model, tok, sol, n_windows=2, seq_len=256)
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
