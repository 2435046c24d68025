"""Variant cache and KL evaluator: equal to the applied rtn plan, restore exactly, disk cache."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bitalloc import SearchSpace, Solution, Status, apply
from bitalloc.backends import KLEvaluator, VariantCache

FORMATS = ["int2-g32", "int3-g32", "int4-g32", "int8-pc", "bf16"]


def mixed_plan(space: SearchSpace, shift: int = 0) -> Solution:
    choice = tuple(u.allowed[(i + shift) % len(u.allowed)] for i, u in enumerate(space.units))
    return Solution(space=space, choice=choice, status=Status.FEASIBLE)


def applied_kl(model, plan: Solution, calib, tokens: int | None = None) -> float:
    """Independent KL: an rtn-applied copy, float64 log-softmax, first ``tokens`` positions."""
    quant = copy.deepcopy(model)
    apply(quant, plan, "rtn", calib=calib)  # the evaluator builds its variants with calib
    num, den, left = 0.0, 0, tokens
    with torch.no_grad():
        for batch in calib.batches:
            x = batch if left is None else batch[:, : min(left, batch.shape[1])]
            if x.shape[1] == 0:
                break
            lr = F.log_softmax(model(input_ids=x).logits.double(), dim=-1)
            lq = F.log_softmax(quant(input_ids=x).logits.double(), dim=-1)
            num += float((lr.exp() * (lr - lq)).sum())
            den += x.numel()
            left = None if left is None else left - x.shape[1]
    return num / den


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("channel_group", [None, 32])
def test_kl_equals_the_applied_model_and_weights_come_back(
    tiny_llama, tiny_calib, channel_group
) -> None:
    space = SearchSpace.from_model(tiny_llama, FORMATS, channel_group=channel_group, tie=None)
    if channel_group:
        assert any(u.channels is not None for u in space.units)
    plan = mixed_plan(space)
    before = state(tiny_llama)
    kl = KLEvaluator(tiny_llama, tiny_calib, space)
    for tokens in (None, 40, 32, 7):
        got = kl(plan, tokens=tokens)
        assert same_state(tiny_llama, before)
        assert got == pytest.approx(applied_kl(tiny_llama, plan, tiny_calib, tokens), rel=1e-6)
        assert got > 0


def test_session_keeps_swapped_weights_equal_to_apply_and_restores(tiny_llama, tiny_calib) -> None:
    space = SearchSpace.from_model(tiny_llama, FORMATS, channel_group=32, tie=None)
    plans = [mixed_plan(space, s) for s in range(3)]
    before = state(tiny_llama)
    kl = KLEvaluator(tiny_llama, tiny_calib, space)
    alone = [kl(p, tokens=64) for p in plans]
    with kl:
        inside = [kl(p, tokens=64) for p in plans]
        applied = copy.deepcopy(before)
        ref = copy.deepcopy(tiny_llama)
        ref.load_state_dict(applied)
        apply(ref, plans[-1], "rtn", calib=tiny_calib)
        for k, v in tiny_llama.state_dict().items():  # the last plan is in place, bit-exactly
            assert torch.equal(v, ref.state_dict()[k]), k
    assert inside == alone
    assert same_state(tiny_llama, before)


def test_disk_cache_writes_safetensors_and_is_reused(tiny_llama, tiny_calib, tmp_path: Path):
    space = SearchSpace.from_model(tiny_llama, FORMATS, tie=None)
    plan = mixed_plan(space, 1)
    first = KLEvaluator(tiny_llama, tiny_calib, space, cache_dir=tmp_path)
    value = first(plan)
    files = sorted(tmp_path.rglob("*"))
    stored = [f for f in files if f.is_file()]
    assert len(stored) == len(space) and all(f.suffix == ".safetensors" for f in stored)
    second = KLEvaluator(tiny_llama, tiny_calib, space, cache_dir=tmp_path)
    assert second(plan) == value and second.variants.built == 0 and first.variants.built > 0
    memory = KLEvaluator(tiny_llama, tiny_calib, space)
    assert memory(plan) == value


def test_variants_are_built_once(tiny_llama, tiny_calib) -> None:
    space = SearchSpace.from_model(tiny_llama, FORMATS, tie=None)
    kl = KLEvaluator(tiny_llama, tiny_calib, space)
    plan = mixed_plan(space)
    kl(plan)
    kl(plan, tokens=16)
    assert kl.variants.built == len(space)


def test_pieces_follow_the_token_budget(tiny_llama) -> None:
    space = SearchSpace.from_model(tiny_llama, FORMATS, tie=None)
    calib = [torch.zeros(3, 10, dtype=torch.long), torch.zeros(2, 10, dtype=torch.long)]
    kl = KLEvaluator(tiny_llama, calib, space)
    assert kl.pieces(None) == [(0, 0, 3, 10), (1, 0, 2, 10)]
    assert kl.pieces(25) == [(0, 0, 2, 10), (0, 2, 3, 5)]
    assert kl.pieces(30) == [(0, 0, 3, 10)]
    assert kl.pieces(34) == [(0, 0, 3, 10), (1, 0, 1, 4)]
    assert kl.pieces(10_000) == kl.pieces(None)


def test_mapping_batches_with_attention_mask(tiny_llama) -> None:
    space = SearchSpace.from_model(tiny_llama, FORMATS, tie=None)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    kl = KLEvaluator(tiny_llama, [{"input_ids": ids, "attention_mask": mask}], space)
    plan = mixed_plan(space)
    full, part = kl(plan), kl(plan, tokens=20)
    assert full > 0 and part > 0 and kl.pieces(20) == [(0, 0, 1, 16), (0, 1, 2, 4)]


def test_bad_input(tiny_llama, tiny_calib, make_llama) -> None:
    space = SearchSpace.from_model(tiny_llama, FORMATS, tie=None)
    kl = KLEvaluator(tiny_llama, tiny_calib, space)
    with pytest.raises(ValueError, match="tokens"):
        kl(mixed_plan(space), tokens=0)
    other = SearchSpace.from_model(make_llama(layers=3), FORMATS, tie=None)
    with pytest.raises(ValueError, match="another search space"):
        kl(mixed_plan(other))
    with pytest.raises(TypeError, match="solution"):
        kl("plan.json")
    with pytest.raises(ValueError, match="unknown backend"):
        KLEvaluator(tiny_llama, tiny_calib, space, backend="nope")
    with pytest.raises(ValueError, match="model.layers.2"):
        VariantCache(tiny_llama, other)
    with pytest.raises(ValueError, match="cannot take format"):
        VariantCache(tiny_llama, space).get(0, "int5-g32")


def test_broken_variant_files_are_rebuilt(tiny_llama, tiny_calib, tmp_path: Path) -> None:
    space = SearchSpace.from_model(tiny_llama, FORMATS, tie=None)
    plan = mixed_plan(space, 1)
    value = KLEvaluator(tiny_llama, tiny_calib, space, cache_dir=tmp_path)(plan)
    first, second = sorted(tmp_path.rglob("*.safetensors"))[:2]
    first.write_bytes(first.read_bytes()[:50])  # truncated by a crash or a full disk
    second.write_bytes(b"not safetensors at all")
    again = KLEvaluator(tiny_llama, tiny_calib, space, cache_dir=tmp_path)
    assert again(plan) == value and again.variants.built == 2
