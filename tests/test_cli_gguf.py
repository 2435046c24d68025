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


@pytest.mark.slow
def test_search_a_whole_file_budget_then_build_it(gguf_llama_dir, tmp_path, capsys) -> None:
    from bitalloc.backends.export import gguf as G

    source = gguf_llama_dir / "model-f32.gguf"
    if not source.is_file():
        G.float_gguf(gguf_llama_dir, source)
    plan = tmp_path / "plan.json"
    whole = 9_600_000
    flags = ["--file-bytes", str(whole), "--float", str(source), "--embedding-type", "q4_0"]
    assert main(search(gguf_llama_dir, plan, *flags)) == 0
    gguf = json.loads(plan.read_text())["meta"]["gguf"]
    assert gguf["embedding_type"] == "q4_0" and gguf["file_bytes"] == whole
    sol = Solution.load(plan)
    assert gguf["fixed_bytes"] + sol.nbytes <= whole
    capsys.readouterr()
    out = tmp_path / "model.gguf"
    assert main(["gguf", str(plan), "-o", str(out), "--float", str(source)]) == 0
    text = capsys.readouterr().out
    size = G.file_bytes(out)
    assert f"({size:,} bytes; predicted {size:,})" in text and "MISMATCH" not in text
    assert size <= whole and G.tensors(out)["token_embd.weight"].type == "Q4_0"


@pytest.mark.slow
def test_search_the_tied_embedding_in_a_whole_file_then_build_it(
    gguf_llama_dir, tmp_path, capsys
) -> None:
    from bitalloc.backends.export import gguf as G

    source = gguf_llama_dir / "model-f32.gguf"
    if not source.is_file():
        G.float_gguf(gguf_llama_dir, source)
    plan, whole = tmp_path / "plan.json", 9_600_000
    flags = ["--bytes", str(whole), "--float", str(source)]  # the whole file; embedding searched
    fixed = [*flags, "--lm-head", "--embedding-type", "q4_0"]
    assert main(search(gguf_llama_dir, plan, *fixed)) == 2
    assert "searches the token embedding" in capsys.readouterr().err and not plan.exists()
    assert main(search(gguf_llama_dir, plan, *flags)) == 0
    sol = Solution.load(plan)
    head = sol.space.units[-1]
    assert head.shares == "model.embed_tokens" and sol.meta["gguf"]["embedding_type"] is None
    assert sol.meta["gguf"]["file_bytes"] == whole
    capsys.readouterr()
    out = tmp_path / "model.gguf"
    build = ["gguf", str(plan), "-o", str(out), "--float", str(source)]
    assert main([*build, "--embedding-type", "q8_0"]) == 2
    assert "searches the token embedding" in capsys.readouterr().err
    assert not out.exists()
    assert main(build) == 0
    text = capsys.readouterr().out
    size = G.file_bytes(out)
    assert f"({size:,} bytes; predicted {size:,})" in text and "MISMATCH" not in text
    assert size <= whole
    assert G.tensors(out)["token_embd.weight"].type == sol.choice[-1].upper()
    tensors, layers = tmp_path / "tensors.json", sol.nbytes - head_bytes(sol)
    assert main(search(gguf_llama_dir, tensors, "--bytes", str(layers), "--tensors-only")) == 0
    only = Solution.load(tensors)
    assert "gguf" not in only.meta and only.nbytes <= layers
    assert len(only.space) == len(sol.space) - 1  # lm_head stays out of a tensors-only search


@pytest.mark.slow
def test_a_whole_file_search_of_an_untied_model_searches_its_embedding(
    gguf_untied_llama_dir, tmp_path, capsys
) -> None:
    from bitalloc.backends.export import gguf as G

    folder = gguf_untied_llama_dir
    source = folder / "model-f32.gguf"
    if not source.is_file():
        G.float_gguf(folder, source)
    plan, whole = tmp_path / "plan.json", 18_000_000
    assert main(search(folder, plan, "--bytes", str(whole), "--float", str(source))) == 0
    sol = Solution.load(plan)
    kinds = {u.name: u.embedding for u in sol.space.units}
    assert kinds["model.embed_tokens"] and kinds["lm_head"] is False
    out = tmp_path / "model.gguf"
    capsys.readouterr()
    assert main(["gguf", str(plan), "-o", str(out), "--float", str(source)]) == 0
    text = capsys.readouterr().out
    size = G.file_bytes(out)
    assert f"({size:,} bytes; predicted {size:,})" in text and size <= whole
    held = G.tensors(out)
    types = dict(zip(sol.space.names, sol.choice))
    assert held["token_embd.weight"].type == types["model.embed_tokens"].upper()
    assert held["output.weight"].type == types["lm_head"].upper()


def head_bytes(sol: Solution) -> int:
    return sol.formats[-1].nbytes(sol.space.units[-1].shape)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--avg-bits", "5", "--lm-head", "--exclude", "x"], "--lm-head replaces the default"),
        (["--avg-bits", "5", "--embeddings", "--exclude", "x"], "--embeddings replaces the"),
        (["--avg-bits", "5", "--tensors-only"], "--tensors-only goes with --target llama.cpp"),
        (["--bytes", "9e6", "--file-bytes", "9e6"], "give exactly one of"),
        (
            ["--file-bytes", "9e6", "--target", "compressed-tensors"],
            "use it with --target llama.cpp",
        ),
        (["--avg-bits", "5", "--embedding-type", "q4_0"], "price a whole GGUF: use --file-bytes"),
        (["--file-bytes", "9e6", "--embedding-type", "q9_k"], "q9_k"),
        (["--file-bytes", "9e6", "--avg-bits", "4"], "give exactly one of"),
        (["--file-bytes", "9e6", "--float", "missing.gguf"], "no such GGUF file"),
    ],
)
def test_whole_file_flags_are_checked_before_loading(tmp_path, capsys, flags, message) -> None:
    out = tmp_path / "plan.json"
    args = search(tmp_path / "no-model", out)
    if "--target" in flags:
        i = args.index("--target")
        del args[i : i + 2]
    assert main([*args, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()
