"""The ``bitalloc`` command on a local tiny model folder: happy paths and bad input (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bitalloc.cli import main

FORMATS = "int2-g32,int3-g32,int4-g32,int8-g32"


def search_args(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "search",
        "--model",
        str(model),
        "--formats",
        FORMATS,
        "--n-samples",
        "4",
        "--seq-len",
        "32",
        "--out",
        str(out),
        "--no-cache",
        "-q",
        *extra,
    ]


@pytest.fixture(scope="module")
def plan(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plans") / "plan.json"
    assert main(search_args(tiny_model_dir, out, "--avg-bits", "3.75")) == 0
    return out


def test_search_writes_a_plan_within_budget(plan: Path) -> None:
    data = json.loads(plan.read_text())
    assert data["status"] == "feasible" and data["avg_bits"] <= 3.75
    assert data["meta"]["estimator"] == "fisher"  # auto: causal LM with a loss
    assert data["meta"]["solver"] == "bitalloc"  # the default pipeline
    assert data["meta"]["backend"]["name"] == "gptq"  # auto: calibration given
    assert data["meta"]["pipeline"]["effort"] == "default"


def test_show_and_list(plan: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(plan), "--units"]) == 0
    out = capsys.readouterr().out
    assert "status: feasible" in out and "model.layers.1.mlp.down_proj" in out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "solvers:" in out and "ilp" in out and "layer_error" in out and "smollm2-135m" in out


def test_pack_writes_the_predicted_bytes(
    plan: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bitalloc.backends.packed import checkpoint_nbytes, read_packed
    from bitalloc.search.solution import Solution

    out = tmp_path / "model.safetensors"
    assert main(["pack", str(plan), "--model", str(tiny_model_dir), "-o", str(out)]) == 0
    sol = Solution.load(plan)
    assert checkpoint_nbytes(out) == sol.nbytes
    assert read_packed(out)[0].choice == sol.choice
    assert f"measured {sol.nbytes:,} bytes" in capsys.readouterr().out
    assert main(["pack", str(tmp_path / "missing.json"), "-o", str(out)]) == 2


def test_pack_refuses_an_infeasible_plan_before_writing(
    plan: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bitalloc.search.solution import Solution, Status

    sol = Solution.load(plan)
    bad = tmp_path / "infeasible.json"
    Solution(
        space=sol.space, choice=(), status=Status.INFEASIBLE, message="budget below the minimum"
    ).save(bad)
    out = tmp_path / "keep.safetensors"
    out.write_bytes(b"an existing checkpoint")
    capsys.readouterr()
    assert main(["pack", str(bad), "--model", str(tiny_model_dir), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "status infeasible" in err and "budget below the minimum" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"an existing checkpoint"
    assert main(["pack", str(plan), "--model", str(tiny_model_dir), "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_eval_json(plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "user.txt"
    text.write_text("The quick brown fox jumps over the lazy dog near the river bank. " * 40)
    assert (
        main(
            [
                "eval",
                str(plan),
                "--json",
                "--windows",
                "2",
                "--seq-len",
                "32",
                "--text",
                str(text),
                "-q",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    for key in ("reference", "plan", "uniform"):
        assert {"avg_bits", "ppl", "kl"} <= set(res[key])
    assert res["uniform"]["format"] == "int3-g32"
    assert res["uniform"]["avg_bits"] <= res["plan"]["avg_bits"] <= 3.75
    assert res["reference"]["kl"] == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--avg-bits", "1.0"], "below the minimum achievable"),
        (["--avg-bits", "12"], "above the maximum"),
        (["--avg-bits", "3", "--formats", "int4-g128x"], "unknown format key"),
        (["--avg-bits", "3", "--solver", "mip"], "unknown solver 'mip'"),
        (["--avg-bits", "3", "--include", "nothing.matches"], "search space is empty"),
        ([], "exactly one of --avg-bits or --bytes"),
        (["--avg-bits", "3", "--backend", "awq"], "unknown backend 'awq'"),
        (["--avg-bits", "3", "--time-limit", "-5"], "`time_limit` must be a number of seconds"),
        (["--avg-bits", "3", "--generations", "5"], "--generations need --solver evopress"),
        (["--avg-bits", "3", "-O", "generations=5"], "-O generations need --solver evopress"),
        (
            ["--avg-bits", "3", "--solver", "ilp", "-O", "generations=5"],
            "-O generations not valid for solver 'ilp'; its options: backend, ",
        ),
        (["--avg-bits", "3", "--solver", "ilp", "-O", "time_limit_s"], "KEY=VALUE"),
        (["--avg-bits", "3", "--seq-len", "100000"], "longer than the context"),
    ],
)
def test_search_bad_input_exits_2_and_writes_nothing(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "plan.json"
    args = search_args(tiny_model_dir, out)
    if "--formats" in extra:
        i = args.index("--formats")
        del args[i : i + 2]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_outputs_are_refused_before_the_search(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    # the model name does not exist: a refusal must come before any model is loaded
    args = ["search", "--model", "no-such-model", "--avg-bits", "3", "-q"]
    assert main([*args, "--out", str(folder)]) == 2
    assert "is a directory" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*args, "--out", str(blocker / "plan.json")]) == 2
    assert "cannot create files under" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "p.json"), "--table", str(folder)]) == 2
    assert "--table" in capsys.readouterr().err


def test_eval_anchors_at_the_plan_bytes(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, table = tmp_path / "plan.json", tmp_path / "table.npz"
    extra = ["--avg-bits", "3.5", "--solver", "ilp", "--table", str(table), "-O", "backend=cbc"]
    assert main(search_args(tiny_model_dir, out, *extra, "-O", "time_limit_s=30")) == 0
    capsys.readouterr()
    opts = json.loads(out.read_text())["meta"]["solver_options"]
    assert opts["backend"] == "cbc" and opts["time_limit_s"] == 30
    ev = ["eval", str(out), "--windows", "2", "--seq-len", "32", "--json", "-q"]
    assert main([*ev, "--table", str(table), "--anchors", "nncf_ratio,mlx_threshold"]) == 0
    res = json.loads(capsys.readouterr().out)
    plan_bits = res["plan"]["avg_bits"]
    for anchor in ("nncf_ratio", "mlx_threshold"):
        assert {"ppl", "kl"} <= set(res[anchor]) and res[anchor]["avg_bits"] <= plan_bits
    assert main([*ev, "--anchors", "nncf_ratio"]) == 2
    assert "--anchors needs --table" in capsys.readouterr().err


def test_eval_rejects_corrupt_and_mismatched_plans(
    plan: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(plan.read_text()[:200])
    assert main(["eval", str(corrupt)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    data = json.loads(plan.read_text())
    data["space"]["units"][0]["shape"] = [7, 64]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(data))
    assert main(["eval", str(wrong), "--windows", "1", "--seq-len", "32", "-q"]) == 2
    assert "plan does not match the model" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "missing.json")]) == 2


def test_console_script_entry_point(plan: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bitalloc", "show", str(plan)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and "avg bits" in out.stdout
