"""compressed-tensors checkpoints: packed by compressed-tensors' own compressor, loaded by
transformers (symmetric groups) or compressed-tensors' decompressor (any plan), and the model
they build computes exactly bitalloc's fake-quant of the plan, at the plan's bytes plus the
16-byte weight_shape per layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bitalloc.backends import BACKENDS
from bitalloc.backends.export import ExportViolations
from bitalloc.backends.export import ct_checkpoint as ct
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace
from tests.backend_helpers import random_plan
from tests.conftest import make_tiny_llama
from tests.search.test_search_targets import random_plans

ANY_GRID = ["int2-g32", "int3-g64", "int4-g32", "int4-g32-sym", "int5-pc", "int8-pc", "fp16"]
SYMMETRIC = ["int4-g32-sym", "int4-g64-sym", "int8-pc-sym", "int3-g32-sym", "bf16"]


def _model():
    return make_tiny_llama(hidden=64, intermediate=128, tie_word_embeddings=True)


def _plan(model, formats, seed=0):
    return random_plan(model, formats, seed, tie=None)


def _fake_quant(model, solution, backend="rtn", calib=None):
    """bitalloc's W_hat per planned layer and the logits of the fake-quantized model."""
    x = torch.arange(24).reshape(1, 24) % 97
    handle = BACKENDS.get(backend).apply(model, solution, calib=calib)
    try:
        weights = {
            u.fqn: model.get_submodule(u.fqn).weight.detach().clone() for u in solution.space.units
        }
        with torch.no_grad():
            logits = model(x).logits
    finally:
        handle.restore()
    return weights, logits, x


def _check_same(loaded, weights, logits, x) -> None:
    with torch.no_grad():  # first: transformers' compressed model decompresses on a forward
        assert torch.equal(loaded(x).logits, logits)
    for fqn, w in weights.items():
        assert torch.equal(loaded.get_submodule(fqn).weight.detach().float(), w.float()), fqn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_plan_decompresses_to_bitalloc_w_hat(tmp_path: Path, seed: int) -> None:
    model = _model()
    plan = _plan(model, ANY_GRID, seed)
    report = ct.save_checkpoint(model, plan, tmp_path / "ck", runtime="transformers")
    assert {r.overhead for r in report} == {ct.SHAPE_BYTES}  # rows/cols are multiples of 32
    quantized = {u.fqn for u, f in zip(plan.space.units, plan.formats) if not f.is_float}
    assert {r.name for r in report} == quantized
    assert sum(r.planned for r in report) == sum(
        f.nbytes(u.shape) for u, f in zip(plan.space.units, plan.formats) if not f.is_float
    )
    loaded = ct.load_checkpoint(tmp_path / "ck", via="compressed-tensors")
    _check_same(loaded, *_fake_quant(model, plan))


def test_symmetric_plan_loads_through_transformers(tmp_path: Path) -> None:
    model = _model()
    plan = _plan(model, SYMMETRIC, 3)
    ct.save_checkpoint(model, plan, tmp_path / "ck", runtime="transformers")
    assert ct.groups_symmetric(tmp_path / "ck")
    loaded = ct.load_checkpoint(tmp_path / "ck", via="transformers")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    _check_same(loaded, *_fake_quant(model, plan))


def test_marlin_plans_with_gptq_codes_round_trip(tmp_path: Path, tiny_calib) -> None:
    model = _model()
    space = SearchSpace.from_model(model, target="compressed-tensors")
    plan = next(random_plans(space, 1, seed=4))
    report = ct.save_checkpoint(model, plan, tmp_path / "ck", quantizer="gptq", calib=tiny_calib)
    assert all(r.stored == r.planned + ct.SHAPE_BYTES for r in report)
    loaded = ct.load_checkpoint(tmp_path / "ck")  # auto: transformers when symmetric
    _check_same(loaded, *_fake_quant(model, plan, "gptq", tiny_calib))


def test_stored_bytes_follow_packing_padding(tmp_path: Path) -> None:
    """Rows of 48 (not a multiple of 32/3): the zero points pad to whole int32 words."""
    model = make_tiny_llama(hidden=48, intermediate=96)
    space = SearchSpace.from_model(model, formats=["int3-g16"], tie=None)
    plan = Solution(space=space, choice=("int3-g16",) * len(space), status=Status.FEASIBLE)
    report = ct.save_checkpoint(model, plan, tmp_path / "ck", runtime="transformers")
    for r in report:
        rows, cols = model.get_submodule(r.name).weight.shape
        groups = cols // 16
        packed = -(-cols * 3 // 32) * 4 * rows + 2 * rows * groups
        zeros = -(-rows * 3 // 32) * 4 * groups
        assert r.stored == packed + zeros + ct.SHAPE_BYTES, r.name


def test_plan_breaking_vllm_rules_writes_nothing(tmp_path: Path) -> None:
    model = _model()
    plan = _plan(model, ["int3-g64", "int4-g32-sym"], 0)
    with pytest.raises(ExportViolations, match="vLLM supports 4/8-bit integers"):
        ct.save_checkpoint(model, plan, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_failed_write_keeps_the_folder(tmp_path: Path, monkeypatch) -> None:
    model = _model()
    plan = _plan(model, SYMMETRIC, 0)
    folder = tmp_path / "ck"
    ct.save_checkpoint(model, plan, folder, runtime="transformers")
    (folder / "tokenizer.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        ct.save_checkpoint(model, _plan(model, SYMMETRIC, 1), folder, runtime="transformers")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    model = _model()
    plan = _plan(model, ANY_GRID, 0)
    with pytest.raises(ValueError, match="`quantizer` must be one of"):
        ct.save_checkpoint(model, plan, tmp_path / "a", quantizer="awq", runtime="transformers")
    ct.save_checkpoint(model, plan, tmp_path / "ck", runtime="transformers")
    with pytest.raises(ValueError, match="`via` must be one of"):
        ct.load_checkpoint(tmp_path / "ck", via="vllm")
    with pytest.raises(ValueError, match="via='compressed-tensors'"):
        ct.load_checkpoint(tmp_path / "ck", via="transformers")
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        ct.load_checkpoint(tmp_path / "nothing")
