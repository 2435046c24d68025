"""``bitalloc export``: exit 2 listing every violation; ``--fix`` reports raised units, bytes."""

from __future__ import annotations

import json

import pytest

from bitalloc import QuantFormat, SearchSpace, Solution, Status, Unit
from bitalloc.backends.export import EXPORTERS
from bitalloc.cli import main

FORMATS = ("int3-g64", "int4-g64", "int8-pc")


@pytest.fixture
def plan_path(tmp_path):
    """A 2-block Llama-like plan: q/k/v split across formats and 3-bit layers."""
    fmts = tuple(QuantFormat.parse(k) for k in FORMATS)
    units, choice = [], []
    for i in range(2):
        for j, (suffix, shape) in enumerate(
            (
                ("self_attn.q_proj", (128, 128)),
                ("self_attn.k_proj", (64, 128)),
                ("self_attn.v_proj", (64, 128)),
                ("mlp.down_proj", (128, 256)),
            )
        ):
            units.append(Unit(f"model.layers.{i}.{suffix}", shape, FORMATS))
            choice.append(FORMATS[(i + j) % 3])
    sol = Solution(SearchSpace(tuple(units), fmts), tuple(choice), Status.OPTIMAL)
    return sol.save(tmp_path / "plan.json")


def test_violations_exit_2_and_list_every_one(plan_path, capsys) -> None:
    out = plan_path.with_name("ct.json")
    code = main(["export", str(plan_path), "--to", "compressed-tensors", "-o", str(out)])
    err = capsys.readouterr().err
    expected = EXPORTERS.get("compressed-tensors").check(Solution.load(plan_path))
    assert code == 2 and not out.exists()
    assert len(expected) > 2 and {v.rule for v in expected} == {"bits", "fused"}
    listed = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    assert listed == [str(v) for v in expected]
    assert "--fix" in err


def test_fix_prints_raised_units_and_budget_change(plan_path, capsys) -> None:
    out, fixed_path = plan_path.with_name("ct.json"), plan_path.with_name("fixed.json")
    argv = ["export", str(plan_path), "--to", "compressed-tensors", "-o", str(out), "--fix"]
    assert main([*argv, "--save-plan", str(fixed_path)]) == 0
    text = capsys.readouterr().out
    before, fixed = Solution.load(plan_path), Solution.load(fixed_path)
    raised = [line for line in text.splitlines() if line.startswith("raised ")]
    changed = [
        (n, a, b) for n, a, b in zip(before.space.names, before.choice, fixed.choice) if a != b
    ]
    assert raised == [f"raised {n}: {a} -> {b}" for n, a, b in changed] and changed
    assert f"bytes {before.nbytes:,} -> {fixed.nbytes:,}" in text
    assert f"avg bits {before.avg_bits:.4f} -> {fixed.avg_bits:.4f}" in text
    assert json.loads(out.read_text())["quant_method"] == "compressed-tensors"
    assert EXPORTERS.get("compressed-tensors").check(fixed) == []


def test_default_output_name_options_and_bad_input(plan_path, capsys) -> None:
    argv = ["export", str(plan_path), "--to", "compressed-tensors", "-O", "runtime=transformers"]
    assert main(argv) == 0  # transformers neither fuses q/k/v nor limits bits to 4/8
    written = json.loads(plan_path.with_name("plan.compressed-tensors.json").read_text())
    assert len(written["config_groups"]) == 3
    argv = ["export", str(plan_path), "--to", "llama.cpp", "--fix"]
    assert main(argv) == 0
    assert plan_path.with_name("plan.llama.cpp.txt").read_text().count("=") >= 4
    assert main(["export", str(plan_path), "--to", "tensorrt"]) == 2
    assert "available: compressed-tensors" in capsys.readouterr().err
    assert main(["export", str(plan_path), "--to", "hqq", "-O", "colour=red"]) == 2
    assert "unknown option" in capsys.readouterr().err


def test_list_prints_exporters(capsys) -> None:
    assert main(["list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("exporters:"))
    assert set(line.split(": ", 1)[1].split(", ")) == set(EXPORTERS.names())
