"""Whole-file GGUF accounting against the files ``llama-quantize`` writes: the predicted size is
the written size, byte for byte, with and without an imatrix and for any embedding and default
type; a plan searched under a whole-file budget gives a file within it. Needs ``make
llama-cpp`` (``make test`` builds it); never skipped."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bitalloc.backends.export import gguf as G
from bitalloc.backends.export import gguf_file as GF
from bitalloc.search.api import solve
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace
from bitalloc.search.table import SensitivityTable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def f32(gguf_llama_dir):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(gguf_llama_dir).eval()
    return model, G.float_gguf(gguf_llama_dir, gguf_llama_dir / "model-f32.gguf")


def _plan(space: SearchSpace, seed: int) -> Solution:
    rng = random.Random(seed)
    return Solution(
        space=space,
        choice=tuple(rng.choice(u.allowed) for u in space.units),
        status=Status.FEASIBLE,
    )


def _imatrix(space: SearchSpace, path):
    values = {str(G.gguf_name(u.fqn)): np.ones(u.shape[1], np.float32) for u in space.units}
    return G.write_imatrix(values, path, dataset="wiki")


@pytest.mark.parametrize(
    "seed, options",
    [
        (0, {}),
        (1, {"embedding_type": "q4_0"}),
        (2, {"embedding_type": "q6_k", "default_type": "q5_0"}),
    ],
)
def test_predicted_file_bytes_are_the_written_bytes(f32, tmp_path, seed, options) -> None:
    model, source = f32
    space = SearchSpace.from_model(model, target="llama.cpp", tie=None)
    plan = _plan(space, seed)
    for imatrix in (None, _imatrix(space, tmp_path / "im.dat")):
        out = tmp_path / f"q-{imatrix is not None}.gguf"
        G.quantize(plan, source, out, imatrix=imatrix, **options)
        predicted = GF.predicted_file_bytes(plan, source, imatrix=imatrix, **options)
        assert predicted == G.file_bytes(out), (imatrix, options)


def test_imatrix_keys_and_the_reserved_upper_bound(f32, tmp_path) -> None:
    model, source = f32
    space = SearchSpace.from_model(model, target="llama.cpp", tie=None)
    path = _imatrix(space, tmp_path / "im.dat")
    keys = GF.imatrix_keys(path)
    assert keys == {
        "quantize.imatrix.file": str(path),
        "quantize.imatrix.dataset": "wiki",
        "quantize.imatrix.entries_count": len(space),
        "quantize.imatrix.chunks_count": 1,
    }
    exact = GF.fixed_bytes(source, space, imatrix=path)
    reserved = GF.fixed_bytes(source, space, imatrix=GF.reserved_imatrix_keys(len(space), "wiki"))
    assert GF.fixed_bytes(source, space) < exact <= reserved


def test_a_whole_file_budget_bounds_the_file(f32, tmp_path) -> None:
    model, source = f32
    space = SearchSpace.from_model(model, target="llama.cpp", tie=None)
    rng = np.random.default_rng(0)
    bits = np.array([f.bits for f in space.formats], float)
    values = np.where(space.mask, rng.uniform(1, 2, space.mask.shape) / bits, np.inf)
    table = SensitivityTable(space, values, "test")
    smallest = np.where(space.mask, space.nbytes_matrix(), np.inf).min(1).sum()
    low = GF.fixed_bytes(source, space, embedding_type="q4_0") + int(smallest)
    for file_bytes in (low + 200_000, low + 900_000):
        budget = GF.file_budget(file_bytes, source, space, embedding_type="q4_0")
        plan = solve(table, budget, "ilp")
        assert plan.success
        out = tmp_path / "plan.gguf"
        G.quantize(plan, source, out, embedding_type="q4_0")
        assert GF.predicted_file_bytes(plan, source, embedding_type="q4_0") == G.file_bytes(out)
        assert G.file_bytes(out) <= file_bytes
    under = solve(table, GF.file_budget(low - 1, source, space, embedding_type="q4_0"), "ilp")
    assert under.status is Status.INFEASIBLE and f"{low:.6g}" in under.message
