"""``bitalloc search --target llama.cpp`` and ``bitalloc gguf``: the plan becomes a GGUF file
through llama.cpp's own tools, with the bytes the plan predicted; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitalloc.cli import main
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace


def search(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "search", "--model", str(model), "--target", "llama.cpp", "--solver", "ilp",
        "--n-samples", "4", "--seq-len", "32", "--out", str(out), "--no-cache", "-q", *extra,
    ]  # fmt: skip


def test_target_refuses_formats_it_cannot_store_before_loading(tmp_path, capsys) -> None:
    out = tmp_path / "plan.json"
    code = main(search(tmp_path / "no-model", out, "--avg-bits", "5", "--formats", "int4-g64"))
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "llama.cpp stores ggml types" in err and not out.exists()


def test_gguf_refuses_a_plan_breaking_llama_cpp_rules(tiny_llama, tmp_path, capsys) -> None:
    space = SearchSpace.from_model(tiny_llama, ["int3-g32"], tie=None)
    plan = Solution(space=space, choice=("int3-g32",) * len(space), status=Status.FEASIBLE)
    plan.save(tmp_path / "plan.json")
    code = main(["gguf", str(tmp_path / "plan.json"), "--float", str(tmp_path / "x.gguf")])
    err = capsys.readouterr().err
    assert code == 2 and f"breaks {len(space)} rule(s) of llama.cpp" in err
    assert err.count("[block_size]") == len(space)
    assert not (tmp_path / "plan.gguf").exists()


def test_gguf_names_the_make_target_when_llama_cpp_is_missing(
    tiny_llama, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("BITALLOC_LLAMA_CPP", str(tmp_path / "empty"))
    space = SearchSpace.from_model(tiny_llama, target="llama.cpp", tie=None)
    plan = Solution(space=space, choice=("q4_0",) * len(space), status=Status.FEASIBLE)
    plan.save(tmp_path / "plan.json")
    assert main(["gguf", str(tmp_path / "plan.json"), "--model", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "run `make llama-cpp`" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_search_for_llama_cpp_then_build_the_gguf(gguf_llama_dir, tmp_path, capsys) -> None:
    plan = tmp_path / "plan.json"
    assert main(search(gguf_llama_dir, plan, "--avg-bits", "5.0")) == 0
    data = json.loads(plan.read_text())
    assert data["meta"]["backend"] == {"name": "ggml", "options": {"imatrix": "auto"}}
    sol = Solution.load(plan)
    assert all(f.is_ggml or f.is_float for f in sol.formats) and sol.avg_bits <= 5.0
    capsys.readouterr()
    out = tmp_path / "model.gguf"
    assert main(["gguf", str(plan), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"file {sol.nbytes:,} bytes, plan predicted {sol.nbytes:,} bytes" in text
    assert "imatrix" in text and out.is_file()
    assert main(["gguf", str(plan), "-o", str(tmp_path)]) == 2  # a folder: refused up front
    assert "is a directory" in capsys.readouterr().err
