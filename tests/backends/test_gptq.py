"""GPTQ / SparseGPT backend: lower layer error than RTN, exact grid, exact masks, reversible."""

from __future__ import annotations

import copy

import pytest
import torch
from backend_helpers import VOCAB, lm_calib, plan
from torch import nn

from bitalloc import QuantFormat, apply
from bitalloc.backends._gptq_core import gptq_quantize, hessian_factor
from bitalloc.data import evaluate_lm
from bitalloc.kernels import dequantize, fake_quantize
from bitalloc.kernels.sparsity import fake_quantize_sparse, satisfies_n_m
from bitalloc.search.calibration import Calibration

DENSE = ["int2-g32", "int3-g32", "int4-g32-sym", "int3-pc", "int4-pc-sym", "int8-g32"]


@pytest.fixture(scope="module")
def layer() -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [48, 128] and correlated inputs X [1024, 128] with a few outlier features."""
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(128, 128, generator=gen) / 128**0.5
    x = torch.randn(1024, 128, generator=gen) @ mix + 0.1 * torch.randn(1024, 128, generator=gen)
    x[:, :4] *= 8.0
    return torch.randn(48, 128, generator=gen), x


def out_err(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    """``||W X - W_hat X||^2`` over the calibration tokens."""
    return float(((w - w_hat) @ x.T).pow(2).sum())


def run(w, x, key: str, act_order: bool = False):  # noqa: ANN001, ANN201
    fmt = QuantFormat.parse(key)
    h = 2 * x.T.double() @ x.double() / x.shape[0]
    factor = hessian_factor(h, 0.01, act_order and not fmt.is_sparse)
    pruned = fmt.pruned_per_row(w.shape[1]) if fmt.is_sparse and fmt.n_m is None else 0
    return gptq_quantize(
        w,
        factor,
        fmt.bits,
        fmt.group_size,
        fmt.symmetric,
        float_kind=fmt.float_kind,
        pruned_per_row=pruned,
        n_m=fmt.n_m,
    )


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("key", DENSE)
def test_gptq_layer_error_below_rtn_and_on_the_grid(layer, key: str, act_order: bool) -> None:
    w, x = layer
    fmt = QuantFormat.parse(key)
    res = run(w, x, key, act_order)
    rtn = fake_quantize(w, fmt.bits, fmt.group_size, fmt.symmetric)
    assert out_err(w, res.weight, x) < 0.8 * out_err(w, rtn, x)
    # exactly what the codes + fp16 scales dequantize to, in the plain group layout
    groups = 1 if fmt.group_size is None else 128 // fmt.group_size
    assert res.scale.dtype == torch.float16 and res.scale.shape == (48, groups)
    assert torch.equal(dequantize(res.codes, res.scale, res.zero, w.shape), res.weight)
    # re-encoding the GPTQ weight with its own scales gives its codes back (it is on the grid)
    s = res.scale.float().unsqueeze(-1)
    g = res.weight.reshape(res.codes.shape)
    if fmt.symmetric:
        assert res.zero is None
        assert torch.equal(torch.round(g / s), res.codes.float())
        assert int(res.codes.min()) >= -(2 ** (fmt.bits - 1))
    else:
        assert int(res.zero.min()) >= 0 and int(res.zero.max()) <= 2**fmt.bits - 1
        assert torch.equal(torch.round(g / s) + res.zero.float().unsqueeze(-1), res.codes.float())
        assert int(res.codes.min()) >= 0 and int(res.codes.max()) <= 2**fmt.bits - 1


@pytest.mark.parametrize(
    "key", ["int4-g32-s0.5", "int3-pc-sym-s0.7", "int4-g32-s2:4", "bf16-s2:4"]
)
def test_sparsegpt_masks_exact_and_error_below_magnitude_rtn(layer, key: str) -> None:
    w, x = layer
    fmt = QuantFormat.parse(key)
    res = run(w, x, key, act_order=True)  # act_order is ignored for sparse formats
    keep = res.keep
    assert keep is not None and keep.shape == w.shape
    assert torch.equal((~keep).sum(dim=1), torch.full((48,), fmt.pruned_per_row(128)))
    if fmt.n_m is not None:
        assert satisfies_n_m(keep, *fmt.n_m)
        assert torch.equal((~keep).reshape(48, -1, 4).sum(-1), torch.full((48, 32), 2))
    assert bool((res.weight[~keep] == 0).all())
    base = fake_quantize_sparse(
        w, fmt.bits, fmt.group_size, fmt.symmetric, fmt.float_kind, fmt.sparsity, fmt.n_m
    )
    assert out_err(w, res.weight, x) < 0.8 * out_err(w, base, x)
    if not fmt.is_float:
        assert torch.equal(dequantize(res.codes, res.scale, res.zero, w.shape), res.weight)


def test_dead_inputs_and_rank_deficient_hessian(layer) -> None:
    w, x = layer
    x = x[:16].clone()  # 16 tokens for 128 inputs: H has rank <= 16
    x[:, 7] = 0.0  # a dead input
    h = 2 * x.T.double() @ x.double() / 16
    factor = hessian_factor(h, 1e-12, act_order=False)
    res = gptq_quantize(w, factor, 3, 32, False)
    assert bool(torch.isfinite(res.weight).all())
    assert torch.equal(dequantize(res.codes, res.scale, res.zero, w.shape), res.weight)


def test_apply_codes_restore_and_context_manager(tiny_llama) -> None:
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    sol = plan(tiny_llama, ["int3-g32", "int4-pc-sym", "bf16", "int4-g32-s2:4"])
    handle = apply(tiny_llama, sol, "gptq", calib=lm_calib(2), keep_codes=True)
    modules = dict(tiny_llama.named_modules())
    for name, fmt in sol.assignment.items():
        w = modules[name].weight
        assert not torch.equal(w, before[f"{name}.weight"]), name
        if fmt.is_float:
            assert torch.equal(w, before[f"{name}.weight"].to(torch.bfloat16).float())
            continue
        t = handle.tensors[name]
        assert torch.equal(w, dequantize(t.codes, t.scale, t.zero, w.shape)), name
        if fmt.is_sparse:
            assert satisfies_n_m(w, 2, 4) and torch.equal(w != 0, t.keep & (w != 0))
    handle.restore()
    handle.restore()  # idempotent
    assert all(torch.equal(v, before[k]) for k, v in tiny_llama.state_dict().items())
    with apply(tiny_llama, sol, "gptq", calib=lm_calib(2)):
        assert not torch.equal(modules[name].weight, before[f"{name}.weight"])
    assert all(torch.equal(v, before[k]) for k, v in tiny_llama.state_dict().items())


def test_mixed_plan_lowers_kl_vs_rtn(tiny_llama) -> None:
    sol = plan(tiny_llama, ["int2-g32", "int3-g32", "int4-pc"])
    rtn, gptq = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    apply(rtn, sol, "rtn")
    apply(gptq, sol, "gptq", calib=lm_calib())
    held_out = torch.randint(0, VOCAB, (8, 64), generator=torch.Generator().manual_seed(7))
    scores = evaluate_lm(tiny_llama, {"rtn": rtn, "gptq": gptq}, held_out)
    assert scores["gptq"].kl < 0.85 * scores["rtn"].kl


def test_channel_slices_take_their_own_formats(tiny_llama) -> None:
    formats = ["int2-g32", "int4-g32-sym", "int3-pc"]
    sol = plan(tiny_llama, formats, channel_group=32)
    handle = apply(tiny_llama, sol, "gptq", calib=lm_calib(2), keep_codes=True)
    modules = dict(tiny_llama.named_modules())
    for unit, key in zip(sol.space.units, sol.choice):
        fmt, t = QuantFormat.parse(key), handle.tensors[unit.name]
        rows = modules[unit.fqn].weight[slice(*unit.channels)]
        assert torch.equal(rows, dequantize(t.codes, t.scale, t.zero, rows.shape)), unit.name
        assert (t.zero is None) == fmt.symmetric
        assert t.scale.shape[1] == (1 if fmt.group_size is None else rows.shape[1] // 32)
    handle.restore()


def test_sequential_feeds_blocks_the_quantized_prefix(make_llama) -> None:
    calib = lm_calib(2)
    sol = plan(make_llama(), ["int2-g32"])
    seq, flat = make_llama(), make_llama()
    apply(seq, sol, "gptq", calib=calib)
    apply(flat, sol, "gptq", calib=calib, sequential=False)
    first = [n for n in sol.assignment if n.startswith("model.layers.0.")]
    second = [n for n in sol.assignment if n.startswith("model.layers.1.")]
    ws, wf = dict(seq.named_modules()), dict(flat.named_modules())
    assert first and all(torch.allclose(ws[n].weight, wf[n].weight) for n in first)
    assert any(not torch.allclose(ws[n].weight, wf[n].weight) for n in second)


def test_plain_module_one_pass_fallback() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32))
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(128, 64, generator=gen) * torch.linspace(0.1, 3, 64) for _ in range(4)]
    calib = Calibration(batches=tuple(xs), forward=lambda m, b: m(b))
    sol = plan(model, ["int3-g32"], exclude=[])
    ref, rtn = copy.deepcopy(model), copy.deepcopy(model)
    apply(rtn, sol, "rtn")
    apply(model, sol, "gptq", calib=calib, max_batches=3)
    x = torch.cat(xs)
    with torch.no_grad():
        y, e_gptq, e_rtn = ref(x), model(x), rtn(x)
    assert float((y - e_gptq).pow(2).sum()) < float((y - e_rtn).pow(2).sum())


def test_refusals(tiny_llama) -> None:
    sol = plan(tiny_llama, ["int4-g32"])
    w0 = tiny_llama.model.layers[0].mlp.up_proj.weight.clone()
    with pytest.raises(ValueError, match="`calib` is required for the gptq backend"):
        apply(tiny_llama, sol, "gptq")
    with pytest.raises(ValueError, match="`percdamp` must be a positive float"):
        apply(tiny_llama, sol, "gptq", calib=lm_calib(1), percdamp=0)
    with pytest.raises(ValueError, match="`block_size` must be a positive int"):
        apply(tiny_llama, sol, "gptq", calib=lm_calib(1), block_size=0)
    with pytest.raises(ValueError, match="unknown option"):
        apply(tiny_llama, sol, "gptq", calib=lm_calib(1), damp=0.1)
    assert torch.equal(tiny_llama.model.layers[0].mlp.up_proj.weight, w0)
    conv = nn.Sequential(nn.Conv2d(32, 32, 1))
    csol = plan(conv, ["int4-g32"], exclude=[])
    with pytest.raises(ValueError, match="gptq supports nn.Linear units only"):
        apply(conv, csol, "gptq", calib=[torch.randn(1, 32, 4, 4)])


def test_cli_eval_with_gptq(tiny_model_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    import json

    from bitalloc.cli import main
    from bitalloc.models import load

    model, _ = load(str(tiny_model_dir))
    path = tmp_path / "plan.json"
    plan(model, ["int2-g32", "int3-g32"]).save(path)
    args = ["eval", str(path), "--model", str(tiny_model_dir), "--json", "-q"]
    args += ["--windows", "2", "--seq-len", "32", "--n-samples", "8"]
    results = {}
    for backend in ("rtn", "gptq"):
        assert main([*args, "--backend", backend]) == 0
        results[backend] = json.loads(capsys.readouterr().out)
    assert results["gptq"]["plan"]["kl"] != results["rtn"]["plan"]["kl"]
    assert results["gptq"]["reference"] == results["rtn"]["reference"]
