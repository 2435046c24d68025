"""Exporters: each target's file is read back by its own library (or checked against its schema)
and each runtime rule is exercised with plans that break it; ``fix`` repairs without lowering bits.
"""

from __future__ import annotations

import fnmatch
import json
import re

import pytest
from contracts.exporter import ExporterContract, llama_space

import bitalloc
from bitalloc import QuantFormat, SearchSpace, Solution, Status, Unit
from bitalloc.backends.export import EXPORTERS, ExportViolations


def plan(space: SearchSpace, default: str, **by_suffix: str) -> Solution:
    """``default`` everywhere; ``by_suffix`` maps "L_suffix" (``0_mlp.down_proj``) or a
    suffix (``mlp.down_proj``, all blocks) to a format key."""
    choice = []
    for u in space.units:
        block, suffix = u.name.split(".", 3)[2], u.name.split(".", 3)[3]
        key = by_suffix.get(
            f"{block}_{suffix}".replace(".", "_"), by_suffix.get(suffix.replace(".", "_"), default)
        )
        choice.append(key)
    return Solution(space=space, choice=tuple(choice), status=Status.FEASIBLE)


def rules_of(violations) -> set[str]:
    return {v.rule for v in violations}


def assert_fixed(exporter, sol: Solution) -> Solution:
    fixed = exporter.fix(sol)
    assert exporter.check(fixed) == []
    for old, new in zip(sol.choice, fixed.choice):
        assert QuantFormat.parse(new).bits >= QuantFormat.parse(old).bits
    assert fixed.space.names == sol.space.names
    return fixed


# ---------------------------------------------------------------------- compressed-tensors
def test_compressed_tensors_config_applies_the_plan_per_layer(tiny_llama) -> None:
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    space = SearchSpace.from_model(tiny_llama, ["int4-g32", "int8-pc", "int4-g64-sym", "bf16"])
    sol = plan(
        space,
        "int4-g32",
        mlp_down_proj="int8-pc",
        **{
            "1_self_attn_q_proj": "int4-g64-sym",
            "1_self_attn_k_proj": "int4-g64-sym",
            "1_self_attn_v_proj": "int4-g64-sym",
            "0_self_attn_o_proj": "bf16",
        },
    )
    cfg = QuantizationConfig.model_validate(bitalloc.export(sol, "compressed-tensors"))
    apply_quantization_config(tiny_llama, cfg, show_progress=False)
    modules = dict(tiny_llama.named_modules())
    for name, fmt in sol.assignment.items():
        scheme = getattr(modules[name], "quantization_scheme", None)
        if fmt.is_float:
            assert scheme is None, name
            continue
        w = scheme.weights
        assert (w.num_bits, w.group_size, w.symmetric) == (fmt.bits, fmt.group_size, fmt.symmetric)
        assert getattr(w.strategy, "value", w.strategy) == (
            "channel" if fmt.group_size is None else "group"
        ), name
    assert getattr(tiny_llama.lm_head, "quantization_scheme", None) is None


def test_compressed_tensors_vllm_rules() -> None:
    ct = EXPORTERS.get("compressed-tensors")
    space = llama_space()
    split = plan(space, "int4-g64", **{"0_self_attn_k_proj": "int8-pc-sym"})
    assert rules_of(ct.check(split)) == {"fused"}
    assert [v.unit for v in ct.check(split)] == ["model.layers.0.self_attn.qkv_proj"]
    assert rules_of(ct.check(plan(space, "int3-g64"))) == {"bits"}
    assert len(ct.check(plan(space, "int3-g64"))) == len(space)
    bad_group = plan(space, "int4-g64", mlp_down_proj="int4-g256-sym")
    assert rules_of(ct.check(bad_group)) == {"group_size"}
    assert ct.check(plan(space, "int4-g64", mlp_down_proj="int4-g128-sym")) == []
    fixed = assert_fixed(ct, bad_group)
    down = {k for n, k in zip(fixed.space.names, fixed.choice) if n.endswith("down_proj")}
    assert down == {"int4-g128-sym"}  # same bits, the nearest finer group, still symmetric
    with pytest.raises(ExportViolations, match="fused"):
        bitalloc.export(split, "compressed-tensors")
    for sol in (split, plan(space, "int3-g64", mlp_up_proj="int2-g64")):
        fixed = assert_fixed(ct, sol)
        assert bitalloc.export(fixed, ct)["config_groups"]
    lenient = EXPORTERS.get("compressed-tensors", runtime="transformers")
    assert lenient.check(plan(space, "int3-g64", mlp_up_proj="int2-g64")) == []
    with pytest.raises(ValueError, match="runtime"):
        EXPORTERS.get("compressed-tensors", runtime="tgi")


# ---------------------------------------------------------------------- llama.cpp
def test_llamacpp_types_file_names_and_types_match_gguf() -> None:
    import gguf

    lc = EXPORTERS.get("llama.cpp")
    space = llama_space(layers=12)
    sol = plan(
        space,
        "int3-g64",
        mlp_down_proj="int6-g64",
        **{
            "3_mlp_down_proj": "int4-g64",
            "11_self_attn_o_proj": "int8-pc-sym",
            "5_mlp_gate_proj": "bf16",
            "5_mlp_up_proj": "bf16",
        },
    )
    assert lc.check(sol) == []
    text = bitalloc.export(sol, "llama.cpp")
    rules = []
    for token in text.split():
        pattern, _, type_name = token.rpartition("=")
        assert pattern.startswith("^") and pattern.endswith("$") and pattern == pattern.lower()
        rules.append((re.compile(pattern), gguf.GGMLQuantizationType[type_name.upper()]))
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 12)
    expected = {
        "model.layers.3.mlp.down_proj": "blk.3.ffn_down.weight",
        "model.layers.11.self_attn.o_proj": "blk.11.attn_output.weight",
        "model.layers.0.self_attn.k_proj": "blk.0.attn_k.weight",
    }
    for u, key in zip(space.units, sol.choice):
        tensor = tmap.get_name(u.name) + ".weight"
        assert expected.get(u.name, tensor) == tensor
        hits = [t for p, t in rules if p.search(tensor)]
        assert len(hits) == 1, tensor
        block, _ = gguf.GGML_QUANT_SIZES[hits[0]]
        assert u.shape[1] % block == 0  # no block-size fallback in llama-quantize
        fmt = QuantFormat.parse(key)
        want = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 6: "Q6_K", 8: "Q8_0", 16: "BF16"}[fmt.bits]
        assert hits[0].name == want, (u.name, key)
    for other in (
        "blk.3.attn_norm.weight",
        "blk.1.ffn_down.weight.bias",
        "blk.12.ffn_down.weight",
        "output.weight",
        "token_embd.weight",
    ):
        assert not any(p.search(other) for p, _ in rules), other


def test_llamacpp_block_size_fallbacks_and_bits() -> None:
    lc = EXPORTERS.get("llama.cpp")
    narrow = llama_space(h=576, m=1536, kv=192)  # SmolLM2 widths: 576 is not a multiple of 256
    three = lc.check(plan(narrow, "int3-g64"))
    assert {v.unit for v in three} == {u.name for u in narrow.units if u.shape[1] == 576}
    assert rules_of(three) == {"block_size"} and "IQ4_NL" in three[0].message
    six = lc.check(plan(narrow, "int4-g64", self_attn_o_proj="int6-g64"))
    assert len(six) == 2 and "Q8_0" in six[0].message
    assert lc.check(plan(narrow, "int4-g64")) == []  # 4-bit rows of 576 -> Q4_1, no fallback
    assert "q4_1" in lc.render(plan(narrow, "int4-g64"))
    assert rules_of(lc.check(plan(llama_space(), "int7-g64"))) == {"bits"}
    no_k = EXPORTERS.get("llama.cpp", k_quants=False)
    assert rules_of(no_k.check(plan(llama_space(), "int3-g64"))) == {"bits"}
    fixed = assert_fixed(lc, plan(narrow, "int3-g64", mlp_down_proj="int2-g64"))
    down = [k for u, k in zip(fixed.space.units, fixed.choice) if u.name.endswith("down_proj")]
    assert set(down) == {"int2-g64"}  # rows of 1536 keep Q2_K: units without violation stay
    assert lc.gguf_nbytes(fixed) > 0
    with pytest.raises(ValueError, match="arch"):
        EXPORTERS.get("llama.cpp", arch="no-such-arch")


def test_llamacpp_channel_slices_and_unknown_names() -> None:
    lc = EXPORTERS.get("llama.cpp")
    f = tuple(QuantFormat.parse(k) for k in ("int2-g64", "int4-g64"))
    keys = tuple(x.key for x in f)
    units = (
        Unit("model.layers.0.mlp.down_proj[0:128]", (128, 512), keys, channels=(0, 128)),
        Unit("model.layers.0.mlp.down_proj[128:256]", (128, 512), keys, channels=(128, 256)),
        Unit("model.layers.0.mlp.up_proj", (512, 256), keys),
    )
    sol = Solution(SearchSpace(units, f), ("int2-g64", "int4-g64", "int2-g64"), Status.FEASIBLE)
    assert [(v.unit, v.rule) for v in lc.check(sol)] == [
        ("model.layers.0.mlp.down_proj", "channels")
    ]
    fixed = assert_fixed(lc, sol)
    assert fixed.choice == ("int4-g64", "int4-g64", "int2-g64")
    assert lc.render(fixed).count("ffn_down") == 1
    odd = Solution(
        SearchSpace((Unit("encoder.blocks.0.conv", (64, 64), keys),), f),
        ("int4-g64",),
        Status.FEASIBLE,
    )
    assert [(v.rule, v.fixable) for v in lc.check(odd)] == [("name", False)]
    with pytest.raises(ValueError, match="cannot fix"):
        lc.fix(odd)


# ---------------------------------------------------------------------- torchao
def test_torchao_config_loads_and_quantizes_a_tiny_llama(tiny_llama, tmp_path) -> None:
    import torch
    from torchao.quantization import FqnToConfig, quantize_
    from transformers import TorchAoConfig

    space = SearchSpace.from_model(tiny_llama, ["int3-g32", "int5-g64-sym", "int8-pc", "bf16"])
    sol = plan(
        space,
        "int3-g32",
        mlp_down_proj="int8-pc",
        self_attn_o_proj="int5-g64-sym",
        **{"1_mlp_up_proj": "bf16"},
    )
    bitalloc.export(sol, "torchao", tmp_path / "torchao.json")
    loaded = TorchAoConfig.from_dict(json.loads((tmp_path / "torchao.json").read_text()))
    assert isinstance(loaded.quant_type, FqnToConfig)
    before = {
        n: m.weight.detach().clone()
        for n, m in tiny_llama.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    quantize_(tiny_llama, loaded.quant_type, filter_fn=None)
    modules = dict(tiny_llama.named_modules())
    for name, fmt in sol.assignment.items():
        w = modules[name].weight
        if fmt.is_float:
            assert type(w) is torch.nn.Parameter and torch.equal(w, before[name])
            continue
        assert w.target_dtype == getattr(torch, f"int{fmt.bits}"), name
        assert tuple(w.block_size) == (1, fmt.group_size or w.shape[1]), name
        err = (w.dequantize() - before[name]).pow(2).sum() / before[name].pow(2).sum()
        assert err < {3: 0.1, 5: 0.01, 8: 1e-3}[fmt.bits], (name, float(err))
    assert torch.equal(tiny_llama.lm_head.weight, before["lm_head"])
    assert tiny_llama(torch.zeros(1, 4, dtype=torch.long)).logits.isfinite().all()


def test_torchao_refuses_sparse_and_split_layers() -> None:
    ta = EXPORTERS.get("torchao")
    space = llama_space()
    assert ta.check(plan(space, "int3-g64", mlp_up_proj="int7-g64")) == []
    sparse = plan(space, "int4-g64", mlp_down_proj="int4-g64-s2:4")
    assert rules_of(ta.check(sparse)) == {"sparsity"}
    fixed = assert_fixed(ta, sparse)
    assert "int4-g64" in fixed.choice and "int4-g64-s2:4" not in fixed.choice


# ---------------------------------------------------------------------- GPTQModel
def test_gptqmodel_dynamic_patterns_resolve_every_module(tiny_llama) -> None:
    space = SearchSpace.from_model(
        tiny_llama, ["int4-g32-sym", "int8-g32-sym", "int2-g64", "bf16"]
    )
    sol = plan(
        space,
        "int4-g32-sym",
        mlp_down_proj="int8-g32-sym",
        **{
            "1_mlp_gate_proj": "int2-g64",
            "1_mlp_up_proj": "int2-g64",
            "0_self_attn_o_proj": "bf16",
        },
    )
    cfg = bitalloc.export(sol, "gptqmodel")
    assert (cfg["bits"], cfg["group_size"], cfg["sym"], cfg["quant_method"]) == (
        4,
        32,
        True,
        "gptq",
    )
    compiled = []
    for key, value in cfg["dynamic"].items():
        sign, _, pattern = key.partition(":")
        assert sign in "+-" and len(sign) == 1
        compiled.append((re.compile(pattern), sign, value))

    def resolve(name: str):  # GPTQModel/vLLM: the first re.match in insertion order wins
        for p, sign, value in compiled:
            if p.match(name):
                return None if sign == "-" else (value["bits"], value["group_size"], value["sym"])
        return cfg["bits"], cfg["group_size"], cfg["sym"]

    for name, fmt in sol.assignment.items():
        want = None if fmt.is_float else (fmt.bits, fmt.group_size or -1, fmt.symmetric)
        assert resolve(name) == want, name
    for block in (0, 1):  # vLLM's fused prefixes resolve like their shards
        p = f"model.layers.{block}"
        assert resolve(f"{p}.self_attn.qkv_proj") == resolve(f"{p}.self_attn.q_proj")
        assert resolve(f"{p}.mlp.gate_up_proj") == resolve(f"{p}.mlp.gate_proj")
    assert resolve("model.layers.1.mlp.gate_up_proj") == (2, 64, False)
    assert resolve("model.layers.10.mlp.gate_up_proj") == (4, 32, True)  # anchored indices


def test_gptqmodel_rules() -> None:
    space = llama_space()
    gptq, marlin = EXPORTERS.get("gptqmodel"), EXPORTERS.get("gptqmodel", backend="gptq_marlin")
    assert rules_of(gptq.check(plan(space, "int3-g64", mlp_up_proj="int4-g64"))) == {"fused"}
    assert rules_of(gptq.check(plan(space, "int3-g64", mlp_down_proj="int5-g64"))) == {"bits"}
    assert gptq.check(plan(space, "int3-g64", mlp_down_proj="int2-g64")) == []
    assert rules_of(marlin.check(plan(space, "int3-g64-sym"))) == {"bits"}
    assert rules_of(marlin.check(plan(space, "int4-g64"))) == {"symmetric"}
    assert marlin.check(plan(space, "int4-g64-sym", mlp_down_proj="int8-pc-sym")) == []
    fixed = assert_fixed(marlin, plan(space, "int3-g64", mlp_up_proj="int2-g64"))
    assert set(fixed.choice) == {"int4-g64-sym"}
    assert_fixed(gptq, plan(space, "int5-g64", self_attn_v_proj="int2-g64"))
    tied = assert_fixed(gptq, plan(space, "int4-g64", self_attn_v_proj="int2-g64"))
    assert set(tied.choice) == {"int4-g64"}  # v joins q/k; zero points kept (GPTQ has them)


def test_gptqmodel_cpu_refuses_asymmetric_4bit_layers_only() -> None:
    space = llama_space()
    cpu = EXPORTERS.get("gptqmodel", backend="gptq_cpu")
    bad = cpu.check(plan(space, "int4-g64-sym", mlp_down_proj="int4-g64"))
    assert {v.unit for v in bad} == {f"model.layers.{i}.mlp.down_proj" for i in (0, 1)}
    assert rules_of(bad) == {"symmetric"} and "TorchFusedLinear" in bad[0].message
    asym_ok = plan(space, "int3-g64", mlp_down_proj="int8-pc-sym", self_attn_o_proj="int2-g64")
    assert cpu.check(asym_ok) == []  # zero points at 2 and 3 bits: its torch kernel
    assert rules_of(cpu.check(plan(space, "int5-g64"))) == {"bits"}
    # the fix drops the zero point at the same bits and group, rather than doubling the bits
    fixed = assert_fixed(cpu, plan(space, "int3-g64", mlp_down_proj="int4-g64"))
    by_name = dict(zip(space.names, fixed.choice))
    assert {k for n, k in by_name.items() if n.endswith("down_proj")} == {"int4-g64-sym"}
    assert {k for n, k in by_name.items() if not n.endswith("down_proj")} == {"int3-g64"}
    # where the target keeps zero points at those bits, the fix keeps them
    kept = assert_fixed(cpu, plan(space, "int3-g64", mlp_up_proj="int2-g64"))
    assert set(kept.choice) == {"int3-g64"}


# ---------------------------------------------------------------------- ModelOpt
def test_modelopt_quant_cfg_resolves_each_quantizer(tiny_llama, tmp_path) -> None:
    import yaml

    space = SearchSpace.from_model(tiny_llama, ["int4-g64-sym", "int8-pc-sym", "bf16"])
    sol = plan(
        space, "int4-g64-sym", mlp_down_proj="int8-pc-sym", **{"1_self_attn_o_proj": "bf16"}
    )
    bitalloc.export(sol, "modelopt", tmp_path / "cfg.yaml")
    cfg = yaml.safe_load((tmp_path / "cfg.yaml").read_text())
    assert cfg["algorithm"] == "max"

    def resolve(quantizer: str) -> dict | None:  # entries apply in order, later wins
        state = None
        for e in cfg["quant_cfg"]:
            if fnmatch.fnmatchcase(quantizer, e["quantizer_name"]):
                state = e.get("cfg") if e.get("enable", True) else None
        return state

    for name, fmt in sol.assignment.items():
        got = resolve(f"{name}.weight_quantizer")
        assert resolve(f"{name}.input_quantizer") is None
        if fmt.is_float:
            assert got is None
        elif fmt.group_size is None:
            assert got == {"num_bits": 8, "axis": 0}
        else:
            assert got["num_bits"] == 4 and got["block_sizes"][-1] == 64  # an int key
    assert resolve("lm_head.weight_quantizer") is None


def test_modelopt_rules() -> None:
    mo, study = EXPORTERS.get("modelopt"), EXPORTERS.get("modelopt", deploy=False)
    space = llama_space()
    assert rules_of(mo.check(plan(space, "int3-g64-sym"))) == {"bits"}
    assert rules_of(mo.check(plan(space, "int4-g32-sym"))) == {"group_size"}
    assert rules_of(mo.check(plan(space, "int4-g64"))) == {"symmetric"}
    split = plan(space, "int4-g64-sym", **{"0_mlp_up_proj": "int4-g128-sym"})
    assert rules_of(mo.check(split)) == {"fused"}
    assert study.check(plan(space, "int3-g64-sym")) == []
    assert set(assert_fixed(study, plan(space, "int3-g64")).choice) == {"int3-g64-sym"}
    fixed = assert_fixed(mo, plan(space, "int4-g64", mlp_down_proj="int2-g64"))
    assert set(fixed.choice) == {"int4-g64-sym"}  # same bits: only the zero point is dropped


# ---------------------------------------------------------------------- HQQ
def test_hqq_dynamic_config_schema_and_tag_rule() -> None:
    hq = EXPORTERS.get("hqq")
    space = llama_space(layers=3)
    sol = plan(
        space,
        "int4-g64",
        mlp_down_proj="int8-pc-sym",
        self_attn_o_proj="int3-g64",
        mlp_gate_proj="bf16",
        mlp_up_proj="bf16",
    )
    cfg = bitalloc.export(sol, "hqq")
    assert set(cfg["dynamic_config"]) == {f"self_attn.{x}_proj" for x in "qkvo"} | {
        "mlp.down_proj"
    }
    for name, fmt in sol.assignment.items():
        tag = ".".join(name.split(".")[-2:])  # transformers' quantizer_hqq lookup
        entry = cfg["dynamic_config"].get(tag)
        if fmt.is_float:
            assert entry is None
            continue
        assert set(entry) == {"nbits", "group_size"} and entry["nbits"] in (8, 4, 3, 2, 1)
        assert (entry["nbits"], entry["group_size"]) == (fmt.bits, fmt.group_size)
    mixed = plan(space, "int4-g64", **{"2_mlp_down_proj": "int2-g64"})
    assert [(v.unit, v.rule) for v in hq.check(mixed)] == [("mlp.down_proj", "tag")]
    fixed = assert_fixed(hq, mixed)
    assert set(fixed.choice) == {"int4-g64"}
    assert rules_of(hq.check(plan(space, "int5-g64"))) == {"bits"}
    vllm = EXPORTERS.get("hqq", runtime="vllm")
    assert rules_of(vllm.check(plan(space, "int3-g64"))) == {"bits"}
    assert vllm.check(plan(space, "int4-g64")) == []


# ---------------------------------------------------------------------- every target
class TestExporterContract(ExporterContract):
    """tests/contracts/exporter.py over every registered exporter."""


class TestGPTQModelBackendsContract(ExporterContract):
    """The same contract for GPTQModel's other runtimes (Marlin, its CPU kernels)."""

    @pytest.fixture(params=["gptq_marlin", "gptq_cpu"])
    def target(self, request: pytest.FixtureRequest) -> str:
        self.backend = request.param
        return "gptqmodel"

    def make(self, target: str):
        return EXPORTERS.get(target, backend=self.backend)


def test_facade_writes_atomically_and_refuses_bad_plans(tmp_path) -> None:
    assert set(bitalloc.available("exporter")) == {
        "compressed-tensors",
        "llama.cpp",
        "torchao",
        "gptqmodel",
        "modelopt",
        "hqq",
    }
    space = llama_space()
    bad = plan(space, "int3-g64")
    out = tmp_path / "q.json"
    with pytest.raises(ExportViolations) as err:
        bitalloc.export(bad, "compressed-tensors", out)
    assert len(err.value.violations) == len(space) and not out.exists()
    rendered = bitalloc.export(bad, "compressed-tensors", out, fix=True)
    assert json.loads(out.read_text()) == rendered
    assert [p.name for p in tmp_path.iterdir()] == ["q.json"]
    infeasible = Solution(space=space, choice=(), status=Status.INFEASIBLE, message="too small")
    with pytest.raises(ValueError, match="status infeasible"):
        bitalloc.export(infeasible, "torchao")
    with pytest.raises(ValueError, match="unknown exporter"):
        bitalloc.export(bad, "tensorrt")
