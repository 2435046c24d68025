"""GPTQModel from bitalloc's export, in its own venv (``make gptqmodel``; ``make test`` builds it,
never skipped). With GPTQModel's own GPTQ: every layer is stored at its planned bits and group,
the checkpoint's bytes are the plan's plus GPTQ's layout (``g_idx``, zero points kept for
symmetric grids), and the weights it dequantizes compute what its own forward computes. With
bitalloc's codes: GPTQModel's loader unpacks exactly bitalloc's codes, zero points and scales."""

from __future__ import annotations

import random

import pytest
import torch

from bitalloc.backends.export import EXPORTERS, ExportViolations
from bitalloc.backends.export.base import code_source, layer_codes
from bitalloc.backends.export.gptqmodel import quantize_model
from bitalloc.search.calibration import Calibration
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace
from tests.backend_helpers import fake_quant_weights, sqnr_db

pytestmark = pytest.mark.slow

MENU = ["int2-g32", "int3-g32", "int4-g32", "int4-g64-sym", "int8-g32", "bf16"]


@pytest.fixture(scope="module")
def float_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _random_plan(model, seed):
    space = SearchSpace.from_model(model, MENU, tie=None)
    rng = random.Random(seed)
    raw = Solution(space, tuple(rng.choice(u.allowed) for u in space.units), Status.FEASIBLE)
    return EXPORTERS.get("gptqmodel").fix(raw)


def _calib(n=8):
    gen = torch.Generator().manual_seed(0)
    batches = tuple(torch.randint(0, 200, (1, 32), generator=gen) for _ in range(n))
    return Calibration(batches=batches, name="r")


def test_gptqmodel_stores_every_layer_as_planned(float_model, tmp_path) -> None:
    model, tok = float_model
    plan = _random_plan(model, 3)
    assert len({f.bits for f in plan.formats if not f.is_float}) >= 2
    run = quantize_model(model, plan, _calib(), tok, tmp_path / "gq")
    assert run.unpacked is None
    assert (run.folder / "config.json").is_file()
    by_name = {lay.name: lay for lay in run.layers}
    minmax = fake_quant_weights(model, plan)
    for u, fmt in zip(plan.space.units, plan.formats):
        if fmt.is_float:
            assert u.fqn not in by_name
            continue
        rows, cols = u.shape
        groups = cols // (fmt.group_size or cols)
        zeros = rows * groups * fmt.bits // 8 if fmt.symmetric else 0  # GPTQ keeps qzeros
        assert by_name[u.fqn].stored == by_name[u.fqn].planned + 4 * cols + zeros, u.fqn
        w = model.get_submodule(u.fqn).weight.detach()
        theirs = run.model.get_submodule(u.fqn).weight.detach()
        # GPTQ trades weight error for output error: 2-3 dB under min-max rounding, measured
        assert sqnr_db(w, theirs) >= sqnr_db(w, minmax[u.fqn]) - 4.0, (u.fqn, fmt.key)
    with torch.no_grad():
        ours = run.model(run.probe_ids).logits
    assert sqnr_db(run.logits, ours) > 25  # GPTQModel's forward (bf16) on its own weights


@pytest.mark.parametrize("codes", ["gptq", "rtn"])
def test_gptqmodel_checkpoint_holds_bitalloc_codes(float_model, tmp_path, codes) -> None:
    import copy

    from safetensors import safe_open

    model, tok = float_model
    model = copy.deepcopy(model)
    with torch.no_grad():  # groups all of one sign: zero points at both ends of the grid
        w = model.model.layers[0].mlp.down_proj.weight
        w[:4] = w[:4].abs() + 0.01
        w[4:8] = -(w[4:8].abs() + 0.01)
    plan = _random_plan(model, 4)  # down_proj of layer 0 at int3-g32, asymmetric
    fmts = {f.key for f in plan.formats if not f.is_float}
    assert {f.symmetric for f in plan.formats if not f.is_float} == {True, False}, fmts
    calib = _calib()
    run = quantize_model(model, plan, calib, tok, tmp_path / "gq", codes=codes)
    assert run.unpacked is not None
    with safe_open(str(next(run.folder.glob("*.safetensors"))), framework="pt") as st:
        scales = {lay.name: st.get_tensor(f"{lay.name}.scales") for lay in run.layers}
    ours = layer_codes(model, plan, code_source(codes), calib)
    edges = 0
    for lay in ours:
        if lay.format.is_float:
            assert lay.fqn not in run.unpacked
            continue
        fmt, (c, z, _) = lay.format, run.unpacked[lay.fqn]
        half = 2 ** (fmt.bits - 1)
        zero = torch.full_like(lay.scale, half, dtype=torch.int16) if fmt.symmetric else lay.zero
        codes_u = lay.codes + half if fmt.symmetric else lay.codes  # GPTQ's codes are unsigned
        assert torch.equal(c, codes_u.to(c.dtype)), lay.fqn
        assert torch.equal(z, zero.to(z.dtype)), lay.fqn
        assert scales[lay.fqn].dtype == torch.float16
        assert torch.equal(scales[lay.fqn].T, lay.scale.half()), lay.fqn
        edges += int((zero == 0).sum() + (zero == 2**fmt.bits - 1).sum())
        # GPTQModel's CPU loader dequantizes with bf16 scales: bf16 rounding, no more
        theirs = run.model.get_submodule(lay.fqn).weight.detach()
        assert sqnr_db(lay.weight, theirs) > 45, lay.fqn
    assert edges > 0  # zero points 0 and 2^b - 1 survive GPTQ's v1 checkpoint format
    with torch.no_grad():
        logits = run.model(run.probe_ids).logits
    assert sqnr_db(run.logits, logits) > 35  # its own forward (bf16) on the same weights


def test_gptqmodel_cpu_kernel_drops_asymmetric_4bit_zero_points(float_model, tmp_path) -> None:
    """Why ``backend="gptq_cpu"`` refuses asymmetric 4-bit layers: for per-channel 4-bit layers
    GPTQModel's CPU loader picks ``TorchFusedLinear``, whose ``transform_cpu`` replaces the
    zero points by zeros, so its forward leaves its own dequantized weights. The fixed plan
    (same bits and group, symmetric) computes what its weights say. If the first assertion
    fails, GPTQModel fixed its kernel and the rule can go."""
    model, tok = float_model
    space = SearchSpace.from_model(model, ["int4-pc", "int4-pc-sym"], tie=None)
    asym = Solution(space, ("int4-pc",) * len(space), Status.FEASIBLE)
    cpu = EXPORTERS.get("gptqmodel", backend="gptq_cpu")
    assert {v.rule for v in cpu.check(asym)} == {"symmetric"}
    fixed = cpu.fix(asym)
    assert set(fixed.choice) == {"int4-pc-sym"}
    agreement = {}
    for name, sol in (("asym", asym), ("fixed", fixed)):
        run = quantize_model(model, sol, _calib(), tok, tmp_path / name, codes="rtn")
        with torch.no_grad():
            ours = run.model(run.probe_ids).logits  # GPTQModel's dequantized weights
        agreement[name] = sqnr_db(run.logits, ours)
    assert agreement["asym"] < 15, agreement  # measured 7 dB
    assert agreement["fixed"] > 35, agreement  # bf16 only, as with every symmetric layer


def test_gptqmodel_refuses_what_it_cannot_store(float_model, tmp_path) -> None:
    model, tok = float_model
    space = SearchSpace.from_model(model, ["int5-g32"], tie=None)
    plan = Solution(space, ("int5-g32",) * len(space), Status.FEASIBLE)
    calib = Calibration(batches=(torch.zeros(1, 8, dtype=torch.long),), name="z")
    with pytest.raises(ExportViolations, match="GPTQ"):
        quantize_model(model, plan, calib, tok, tmp_path / "gq")
    assert not (tmp_path / "gq").exists()


@pytest.mark.slow
def test_a_missing_gptqmodel_venv_names_the_make_target(float_model, tmp_path, monkeypatch):
    from bitalloc.toolkits.process import ToolkitMissing

    model, tok = float_model
    monkeypatch.setenv("BITALLOC_GPTQMODEL", str(tmp_path / "nothing"))
    space = SearchSpace.from_model(model, ["int4-g32"], tie=None)
    plan = Solution(space, ("int4-g32",) * len(space), Status.FEASIBLE)
    calib = Calibration(batches=(torch.zeros(1, 8, dtype=torch.long),), name="z")
    with pytest.raises(ToolkitMissing, match="make gptqmodel"):
        quantize_model(model, plan, calib, tok, tmp_path / "gq")
    assert not (tmp_path / "gq").exists()
