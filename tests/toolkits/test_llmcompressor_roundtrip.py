"""llm-compressor's own ``oneshot`` from bitalloc's exported ``config_groups``, in its own venv
(``make llm-compressor``; ``make test`` builds it, never skipped): the checkpoint it writes
holds every layer at its planned format and bytes, bitalloc loads it, and its weights are as
close to the float ones as the same grid allows."""

from __future__ import annotations

import pytest
import torch

from bitalloc.backends.export import ExportViolations
from bitalloc.backends.export import ct_checkpoint as ct
from bitalloc.search.calibration import Calibration
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace
from tests.backend_helpers import fake_quant_weights, sqnr_db
from tests.search.test_search_targets import random_plans

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def float_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _calib() -> Calibration:
    gen = torch.Generator().manual_seed(0)
    batches = tuple(torch.randint(0, 200, (1, 32), generator=gen) for _ in range(8))
    return Calibration(batches=batches, name="random")


@pytest.mark.parametrize("modifier, slack", [("rtn", 1.0), ("gptq", 4.0)])
def test_oneshot_writes_the_planned_checkpoint(float_model, tmp_path, modifier, slack) -> None:
    model, tok = float_model
    space = SearchSpace.from_model(model, target="compressed-tensors")
    plan = next(random_plans(space, 1, seed=7))
    assert len(set(plan.choice)) >= 3
    layers = ct.oneshot_checkpoint(model, plan, _calib(), tok, tmp_path / "ck", modifier=modifier)
    assert len(layers) == len(space)
    for lay, u, fmt in zip(layers, space.units, plan.formats):
        # the plan's bytes + weight_shape, and llm-compressor keeps each scale in the model's
        # dtype (float32 here) where bitalloc stores fp16: 2 more bytes per group
        assert lay.name == u.fqn
        assert lay.stored == lay.planned + ct.SHAPE_BYTES + 2 * fmt.n_groups(u.shape), u.fqn
    loaded = ct.load_checkpoint(tmp_path / "ck")
    minmax = fake_quant_weights(model, plan)  # no calibration: bitalloc's min-max grid
    for u, fmt in zip(plan.space.units, plan.formats):
        w = model.get_submodule(u.fqn).weight.detach()
        theirs = loaded.get_submodule(u.fqn).weight.detach()
        assert sqnr_db(w, theirs) >= sqnr_db(w, minmax[u.fqn]) - slack, (u.fqn, fmt.key)
    with torch.no_grad():
        assert torch.isfinite(loaded(torch.arange(16).reshape(1, 16)).logits).all()


def test_oneshot_refuses_bad_plans_and_a_missing_venv(float_model, tmp_path, monkeypatch):
    from bitalloc.toolkits.process import ToolkitMissing

    model, tok = float_model
    space = SearchSpace.from_model(model, ["int3-g32"], tie=None)
    plan = Solution(space, ("int3-g32",) * len(space), Status.FEASIBLE)
    with pytest.raises(ExportViolations, match="vLLM supports 4/8-bit"):
        ct.oneshot_checkpoint(model, plan, _calib(), tok, tmp_path / "ck")
    good = next(random_plans(SearchSpace.from_model(model, target="compressed-tensors"), 1))
    with pytest.raises(ValueError, match="`modifier` must be one of"):
        ct.oneshot_checkpoint(model, good, _calib(), tok, tmp_path / "ck", modifier="awq")
    monkeypatch.setenv("BITALLOC_LLMCOMPRESSOR", str(tmp_path / "nothing"))
    with pytest.raises(ToolkitMissing, match="make llm-compressor"):
        ct.oneshot_checkpoint(model, good, _calib(), tok, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
