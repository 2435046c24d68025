"""Packed backend: PackedLinear == rtn fake-quant, exact bytes, safetensors round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitalloc import SearchSpace, Solution, Status, apply
from bitalloc.backends.packed import (
    PackedBackend,
    checkpoint_nbytes,
    load_packed,
    read_packed,
    save_packed,
)
from bitalloc.backends.packed_linear import PackedLinear
from bitalloc.kernels.sparsity import satisfies_n_m

MIXED = [
    "int3-g32",  # 3-bit asym: codes straddle bytes
    "int4-g32-sym",
    "int8-pc",
    "int2-g16",
    "int3-pc-sym-s0.5",
    "int4-g32-s2:4",
    "bf16",
    "fp16-s0.6",
    "int5-g64",
]


def plan(model, formats=MIXED, **space_kw) -> Solution:
    space = SearchSpace.from_model(model, formats, **space_kw)
    choice = tuple(formats[(2 * i + 1) % len(formats)] for i in range(len(space)))
    return Solution(space=space, choice=choice, status=Status.FEASIBLE)


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = (ref.double() - out.double()).square().sum().clamp_min(1e-300)
    return float(10 * torch.log10(ref.double().square().sum() / noise))


def logits(model, calib) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(input_ids=b).logits for b in calib.batches])


@pytest.mark.parametrize("channel_group", [None, 16])
def test_packed_equals_rtn_and_bytes_are_exact(tiny_llama, tiny_calib, channel_group) -> None:
    sol = plan(tiny_llama, channel_group=channel_group)
    used = set(sol.choice)
    assert {"int3-g32", "int4-g32-s2:4", "int3-pc-sym-s0.5", "fp16-s0.6", "int8-pc"} <= used
    before = {n: m for n, m in tiny_llama.named_modules() if isinstance(m, nn.Linear)}
    with apply(tiny_llama, sol, "rtn"):
        fake = {n: m.weight.detach().clone() for n, m in before.items()}
        ref = logits(tiny_llama, tiny_calib)
    handle = apply(tiny_llama, sol, "packed")
    packed = {n: m for n, m in tiny_llama.named_modules() if isinstance(m, PackedLinear)}
    assert set(packed) == {u.fqn for u in sol.space.units}
    for name, layer in packed.items():  # dequantized weight == rtn weight, bit for bit
        assert torch.equal(layer.dequantized_weight(), fake[name]), name
    out = logits(tiny_llama, tiny_calib)
    assert sqnr_db(ref, out) > 60
    measured = sum(m.nbytes for m in packed.values())
    assert measured == sol.nbytes  # model memory of the planned weights == prediction
    handle.restore()
    for n, m in tiny_llama.named_modules():
        if n in before:
            assert m is before[n]


def test_two_four_blocks_are_valid_and_masks_exact(tiny_llama) -> None:
    sol = plan(tiny_llama, ["int4-g32-s2:4", "int3-g32-s0.7"])
    with apply(tiny_llama, sol, "packed"):
        for u, key in zip(sol.space.units, sol.choice):
            w = tiny_llama.get_submodule(u.fqn).dequantized_weight()
            if key.endswith("2:4"):
                assert satisfies_n_m(w, 2, 4)
            else:
                assert ((w == 0).sum(dim=1) >= int(0.7 * w.shape[1])).all()


def test_save_load_round_trip_bit_exact(tmp_path, make_llama, tiny_calib) -> None:
    model = make_llama(seed=3)
    sol = plan(model, channel_group=32)
    path = save_packed(model, sol, tmp_path / "model.safetensors")
    assert not any(isinstance(m, PackedLinear) for m in model.modules())  # left untouched
    assert checkpoint_nbytes(path) == sol.nbytes
    plan_back, tensors = read_packed(path)
    assert plan_back.to_dict() == sol.to_dict()
    with apply(model, sol, "packed"):
        expected = logits(model, tiny_calib)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        # saving an already packed model writes the same bytes
        again = read_packed(save_packed(model, sol, tmp_path / "again.safetensors"))[1]
        assert set(again) == set(tensors)
        assert all(torch.equal(again[k], t) for k, t in tensors.items())
    fresh = make_llama(seed=3)
    handle = load_packed(fresh, path)
    got = fresh.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert torch.equal(logits(fresh, tiny_calib), expected)
    handle.restore()
    assert not any(isinstance(m, PackedLinear) for m in fresh.modules())


def test_mismatched_checkpoint_is_refused(tmp_path, make_llama) -> None:
    from safetensors.torch import load_file, save_file

    model = make_llama(seed=0)
    path = save_packed(model, plan(model), tmp_path / "p.safetensors")
    bigger = make_llama(seed=0, layers=3)
    path3 = save_packed(bigger, plan(bigger), tmp_path / "p3.safetensors")
    with pytest.raises(ValueError, match="does not match the model.*model.layers.2"):
        load_packed(model, path3)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    # a tampered tensor shape and a foreign tensor
    tensors = load_file(path)
    meta = read_packed_meta(path)
    name = next(k for k in tensors if k.endswith("b0_scales"))
    bad = dict(tensors)
    bad[name] = tensors[name][:-1].contiguous()
    save_file(bad, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(ValueError, match="b0_scales"):
        load_packed(model, tmp_path / "bad.safetensors")
    extra = dict(
        tensors, **{"model.layers.0.mlp.up_proj.b9_codes": torch.zeros(3, dtype=torch.uint8)}
    )
    save_file(extra, tmp_path / "extra.safetensors", metadata=meta)
    with pytest.raises(ValueError, match="unexpected b9_codes"):
        load_packed(model, tmp_path / "extra.safetensors")
    save_file(tensors, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not a bitalloc packed checkpoint"):
        load_packed(model, tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="cannot read packed checkpoint"):
        load_packed(model, tmp_path / "junk.safetensors")
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def read_packed_meta(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata())


def test_refusals(tiny_llama) -> None:
    conv = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8, 8))
    space = SearchSpace.from_model(conv, ["int8-pc"], exclude=())
    sol = Solution(space=space, choice=("int8-pc",) * len(space), status=Status.FEASIBLE)
    backend = PackedBackend()
    assert not backend.supports(space.units[0], space.formats[0])
    assert backend.supports(space.units[1], space.formats[0])
    with pytest.raises(ValueError, match="nn.Linear layers only; '0' is Conv2d"):
        apply(conv, sol, "packed")
    sliced = SearchSpace.from_model(tiny_llama, ["int8-pc"], channel_group=32)
    part = sliced.restrict([u.name for u in sliced.units if not u.name.endswith("[32:64]")])
    sol = Solution(space=part, choice=("int8-pc",) * len(part), status=Status.FEASIBLE)
    with pytest.raises(ValueError, match=r"cover rows \[0:32\], not all 64 output rows"):
        apply(tiny_llama, sol, "packed")
    with pytest.raises(ValueError, match="`mask_score`"):
        PackedBackend(mask_score="l1")


def test_wanda_masks_match_rtn(tiny_llama, tiny_calib) -> None:
    sol = plan(tiny_llama, ["int4-g32-s0.5", "int4-g32-s2:4"])
    with pytest.raises(ValueError, match="`calib` is required"):
        apply(tiny_llama, sol, "packed", mask_score="wanda")
    with apply(tiny_llama, sol, "rtn", mask_score="wanda", calib=tiny_calib):
        fake = {u.fqn: tiny_llama.get_submodule(u.fqn).weight.clone() for u in sol.space.units}
    with apply(tiny_llama, sol, "packed", mask_score="wanda", calib=tiny_calib):
        for fqn, w in fake.items():
            assert torch.equal(tiny_llama.get_submodule(fqn).dequantized_weight(), w)
