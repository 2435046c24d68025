"""``bitalloc search --target compressed-tensors`` then ``bitalloc checkpoint``: a checkpoint
transformers or compressed-tensors loads into exactly the plan's weights, at the plan's bytes;
bad input exits 2 with nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bitalloc.backends.export import ct_checkpoint as ct
from bitalloc.cli import main
from bitalloc.search.api import plan_backend
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace


def search(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "search", "--model", str(model), "--target", "compressed-tensors", "--solver", "ilp",
        "--n-samples", "4", "--seq-len", "32", "--out", str(out), "--no-cache", "-q", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ct_plan(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ct-plans") / "plan.json"
    assert main(search(tiny_model_dir, out, "--avg-bits", "4.6")) == 0
    return out


def test_checkpoint_holds_the_plan_weights_at_its_bytes(
    ct_plan: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM

    from bitalloc.data.tokens import calibration_from_record
    from bitalloc.models import load

    sol = Solution.load(ct_plan)
    out = tmp_path / "ck"
    capsys.readouterr()
    assert main(["checkpoint", str(ct_plan), "--model", str(tiny_model_dir), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    planned = sum(f.nbytes(u.shape) for u, f in zip(sol.space.units, sol.formats))
    assert f"= plan {planned:,} + weight_shape" in text and "MISMATCH" not in text
    assert (out / "tokenizer.json").is_file()
    loaded = ct.load_checkpoint(out)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    _, tok = load(str(tiny_model_dir))
    calib = calibration_from_record(tok, sol.meta["calibration"])
    handle = plan_backend(sol).apply(model, sol, calib=calib)  # the plan's own backend
    x = torch.arange(20).reshape(1, 20) % 50
    try:
        with torch.no_grad():
            assert torch.equal(loaded(x).logits, model(x).logits)
    finally:
        handle.restore()


def test_checkpoint_refuses_a_plan_vllm_cannot_serve(
    tiny_llama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = SearchSpace.from_model(tiny_llama, ["int3-g32"], tie=None)
    plan = Solution(space=space, choice=("int3-g32",) * len(space), status=Status.FEASIBLE)
    plan.save(tmp_path / "plan.json")
    code = main(["checkpoint", str(tmp_path / "plan.json"), "-o", str(tmp_path / "ck")])
    err = capsys.readouterr().err
    assert code == 2 and f"breaks {len(space)} rule(s) of compressed-tensors" in err
    assert err.count("[bits]") == len(space) and "Traceback" not in err
    assert not (tmp_path / "ck").exists()


def test_checkpoint_bad_paths_exit_2(ct_plan: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "file"
    target.write_text("keep")
    assert main(["checkpoint", str(ct_plan), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert "is a file; give a folder" in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == "keep"
    assert main(["checkpoint", str(tmp_path / "missing.json")]) == 2
