"""RTN backend: applies the plan exactly, restores bit-exactly, refuses mismatched plans."""

from __future__ import annotations

import pytest
import torch

from bitalloc import SearchSpace, Solution, Status, apply
from bitalloc.kernels import fake_quantize

FORMATS = ["int2-g32", "int4-g32", "int8-pc"]


def plan_for(model, keys=None) -> Solution:
    space = SearchSpace.from_model(model, FORMATS)
    choice = keys or tuple(FORMATS[i % 3] for i in range(len(space)))
    return Solution(space=space, choice=choice, status=Status.FEASIBLE)


def test_apply_matches_reference_and_restore_is_bit_exact(tiny_llama) -> None:
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    sol = plan_for(tiny_llama)
    handle = apply(tiny_llama, sol, "rtn")
    modules = dict(tiny_llama.named_modules())
    for name, fmt in sol.assignment.items():
        expected = fake_quantize(before[f"{name}.weight"], fmt.bits, fmt.group_size, fmt.symmetric)
        assert torch.equal(modules[name].weight, expected)
    assert not torch.equal(
        tiny_llama.model.layers[0].self_attn.q_proj.weight,
        before["model.layers.0.self_attn.q_proj.weight"],
    )
    handle.restore()
    handle.restore()  # idempotent
    for k, v in tiny_llama.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_context_manager_restores(tiny_llama) -> None:
    w0 = tiny_llama.model.layers[1].mlp.down_proj.weight.clone()
    with apply(tiny_llama, plan_for(tiny_llama)):
        assert not torch.equal(tiny_llama.model.layers[1].mlp.down_proj.weight, w0)
    assert torch.equal(tiny_llama.model.layers[1].mlp.down_proj.weight, w0)


def test_mismatched_plan_is_refused_without_touching_the_model(tiny_llama, make_llama) -> None:
    bigger = make_llama(layers=3)
    sol = plan_for(bigger)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    with pytest.raises(ValueError, match="plan does not match the model: model.layers.2"):
        apply(tiny_llama, sol)
    assert all(torch.equal(v, before[k]) for k, v in tiny_llama.state_dict().items())


def test_infeasible_plan_cannot_be_applied(tiny_llama) -> None:
    space = SearchSpace.from_model(tiny_llama, FORMATS)
    sol = Solution(space=space, choice=(), status=Status.INFEASIBLE, message="too small")
    with pytest.raises(ValueError, match="status infeasible"):
        apply(tiny_llama, sol)
