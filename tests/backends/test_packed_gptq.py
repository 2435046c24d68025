"""Packed checkpoints from GPTQ: GPTQ's own codes/scales/zeros/masks, bit-exact, exact bytes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from backend_helpers import VOCAB, lm_calib, plan
from torch import nn

from bitalloc import Solution, apply
from bitalloc.backends.packed import (
    PackedBackend,
    checkpoint_nbytes,
    load_packed,
    read_packed,
    save_packed,
)
from bitalloc.backends.packed_linear import PackedLinear


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = (ref.double() - out.double()).square().sum().clamp_min(1e-300)
    return float(10 * torch.log10(ref.double().square().sum() / noise))


def logits(model: nn.Module, batches: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batches).logits


CASES = {
    "dense-asym": ["int4-g32", "int2-g16"],
    "dense-sym": ["int4-g32-sym", "int8-g32-sym"],
    "per-channel": ["int4-pc", "int3-pc-sym"],
    "3-bit": ["int3-g32", "int3-g16-sym"],
    "sparse": ["int4-g32-s2:4", "int3-pc-sym-s0.5", "bf16-s2:4", "fp16-s0.6", "bf16"],
}


@pytest.mark.parametrize("channel_group", [None, 32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_from_gptq_equals_gptq_bit_for_bit(
    tiny_llama, tmp_path: Path, case: str, channel_group: int | None
) -> None:
    formats = CASES[case]
    sol = plan(tiny_llama, formats, channel_group=channel_group)
    assert set(sol.choice) == set(formats)
    calib = lm_calib(2)
    float_model = copy.deepcopy(tiny_llama)
    gptq = copy.deepcopy(tiny_llama)
    apply(gptq, sol, "gptq", calib=calib)
    fake = {n: m.weight for n, m in gptq.named_modules() if isinstance(m, nn.Linear)}

    handle = apply(tiny_llama, sol, "packed", quantizer="gptq", calib=calib)
    packed = {n: m for n, m in tiny_llama.named_modules() if isinstance(m, PackedLinear)}
    assert set(packed) == {u.fqn for u in sol.space.units}
    for fqn, layer in packed.items():
        assert torch.equal(layer.dequantized_weight(), fake[fqn]), fqn
    assert sum(m.nbytes for m in packed.values()) == sol.nbytes
    held_out = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(7))
    ref = logits(gptq, held_out)
    assert sqnr_db(ref, logits(tiny_llama, held_out)) > 60
    handle.restore()  # the float model is back, untouched by GPTQ
    after = tiny_llama.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in float_model.state_dict().items())

    path = save_packed(tiny_llama, sol, tmp_path / "m.safetensors", quantizer="gptq", calib=calib)
    assert checkpoint_nbytes(path) == sol.nbytes
    assert read_packed(path)[0].choice == sol.choice
    assert all(torch.equal(v, after[k]) for k, v in float_model.state_dict().items())
    with load_packed(float_model, path):
        assert sqnr_db(ref, logits(float_model, held_out)) > 60
        for fqn, layer in float_model.named_modules():
            if isinstance(layer, PackedLinear):
                assert torch.equal(layer.dequantized_weight(), fake[fqn]), fqn


def test_gptq_packing_differs_from_rtn_and_takes_options(tiny_llama, tmp_path: Path) -> None:
    sol = plan(tiny_llama, ["int3-g32"])
    calib = lm_calib(2)
    rtn = save_packed(tiny_llama, sol, tmp_path / "rtn.safetensors")
    gptq = save_packed(
        tiny_llama, sol, tmp_path / "g.safetensors", quantizer="gptq", calib=calib, act_order=True
    )
    a, b = read_packed(rtn)[1], read_packed(gptq)[1]
    assert a.keys() == b.keys() and checkpoint_nbytes(rtn) == checkpoint_nbytes(gptq)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("_codes"))
    ordered = copy.deepcopy(tiny_llama)
    apply(ordered, sol, "gptq", calib=calib, act_order=True)
    with load_packed(tiny_llama, gptq):
        for fqn, m in ordered.named_modules():
            if isinstance(m, nn.Linear) and fqn in {u.fqn for u in sol.space.units}:
                got = tiny_llama.get_submodule(fqn).dequantized_weight()
                assert torch.equal(got, m.weight), fqn


def test_bad_quantizer_arguments(tiny_llama, tmp_path: Path) -> None:
    sol = plan(tiny_llama, ["int4-g32"])
    path = tmp_path / "m.safetensors"
    w0 = tiny_llama.model.layers[0].mlp.up_proj.weight.clone()
    with pytest.raises(ValueError, match="`calib` is required"):
        save_packed(tiny_llama, sol, path, quantizer="gptq")
    with pytest.raises(ValueError, match=r"`quantizer` must be one of \('rtn', 'gptq'\)"):
        save_packed(tiny_llama, sol, path, quantizer="awq")
    with pytest.raises(ValueError, match="unknown option.*damp"):
        save_packed(tiny_llama, sol, path, quantizer="gptq", calib=lm_calib(1), damp=0.1)
    with pytest.raises(ValueError, match="`percdamp`"):
        PackedBackend(quantizer="gptq", quantizer_options={"percdamp": 0})
    with pytest.raises(ValueError, match=r"unknown option.*percdamp.*backend 'rtn'"):
        save_packed(tiny_llama, sol, path, percdamp=0.1)
    with pytest.raises(ValueError, match="`mask_score`"):
        PackedBackend(mask_score="wanda", quantizer="gptq")
    with pytest.raises(ValueError, match="keep_codes"):
        PackedBackend(quantizer="gptq", quantizer_options={"keep_codes": False})
    assert not path.exists()
    assert torch.equal(tiny_llama.model.layers[0].mlp.up_proj.weight, w0)
    assert not any(isinstance(m, PackedLinear) for m in tiny_llama.modules())


def test_cli_pack_gptq_writes_the_predicted_bytes(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bitalloc.cli import main

    plan_path = tmp_path / "plan.json"
    args = ["search", "--model", str(tiny_model_dir), "--formats", "int2-g32,int3-g32,int4-g32"]
    args += ["--n-samples", "2", "--seq-len", "32", "--out", str(plan_path), "--no-cache", "-q"]
    assert main([*args, "--avg-bits", "3.5"]) == 0
    out = tmp_path / "gptq.safetensors"
    pack = ["pack", str(plan_path), "--model", str(tiny_model_dir), "-o", str(out)]
    assert main([*pack, "--quantizer", "gptq", "--n-samples", "2", "--seq-len", "32"]) == 0
    sol = Solution.load(plan_path)
    assert checkpoint_nbytes(out) == sol.nbytes
    assert f"measured {sol.nbytes:,} bytes" in capsys.readouterr().out
    rtn = tmp_path / "rtn.safetensors"
    assert main([*pack[:-1], str(rtn)]) == 0
    a, b = read_packed(rtn)[1], read_packed(out)[1]
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("_codes"))
    with pytest.raises(SystemExit):
        main([*pack, "--quantizer", "awq"])


def test_quantizer_by_composition_equals_name_and_options() -> None:
    from bitalloc.backends import BACKENDS
    from bitalloc.backends.gptq import GptqBackend
    from bitalloc.backends.packed import PackedBackend
    from bitalloc.backends.rtn import RtnBackend

    composed = PackedBackend(quantizer=GptqBackend(sequential=False, act_order=False))
    named = PackedBackend(
        quantizer="gptq", quantizer_options={"sequential": False, "act_order": False}
    )
    assert composed == named and composed.quantizer_backend() == named.quantizer_backend()
    assert composed.quantizer_backend().keep_codes is True
    wanda = PackedBackend(quantizer=RtnBackend(mask_score="wanda", grid="minmax"))
    assert wanda.mask_score == "wanda" and wanda.quantizer_options == {"grid": "minmax"}
    assert BACKENDS.get("packed", **{"quantizer": "rtn", **_fields(wanda)}) == wanda
    with pytest.raises(TypeError, match="`quantizer` must be one of"):
        PackedBackend(quantizer=PackedBackend())
    with pytest.raises(ValueError, match="quantizer_options"):
        PackedBackend(quantizer=GptqBackend(), quantizer_options={"sequential": False})


def _fields(backend: object) -> dict:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(backend).items() if k != "quantizer"}
