"""GPTQModel ``QuantizeConfig(dynamic=...)``: a base format plus per-module regex overrides.

``dynamic`` keys are ``+:REGEX`` (apply these overrides) or ``-:REGEX`` (do not quantize), matched
with ``re.match`` in insertion order (ModelCloud/GPTQModel ``_resolve_dynamic_override``;
exports.md section 1). The base ``bits``/``group_size``/``sym`` is the integer format holding the
most weights; every other planned module gets an anchored ``+:`` override, float units a ``-:``.
vLLM matches the same patterns against its fused prefixes (``...self_attn.qkv_proj``,
``...mlp.gate_up_proj``), so every pattern also names the fused module and q/k/v and gate/up
must share a format. Modules the plan does not list get the base format.

Runtime rules: ``backend="gptq"`` (vLLM ``gptq`` kernels: 2/3/4/8 bits, any group);
``backend="gptq_marlin"`` (4/8-bit symmetric, per-channel or g32/g64/g128,
``GPTQMarlinConfig.TYPE_MAP``); ``backend="gptq_cpu"`` (what ``GPTQModel.load(...,
device="cpu")`` computes correctly: 2/3/4/8 bits, 4-bit layers symmetric). GPTQModel 7.7's
4-bit CPU kernel ``TorchFusedLinear``, which it picks for per-channel layers, for rows not a
multiple of 32 and on CPUs without AVX-512, replaces the checkpoint's zero points by zeros in
``transform_cpu``: an asymmetric 4-bit layer then computes with the wrong grid (its forward
and its own ``dequantize_weight()`` agree to about 7 dB, pinned by
``tests/toolkits/test_gptqmodel_roundtrip.py``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...search.formats import QuantFormat
from ...search.solution import Solution
from ...search.space import Unit
from . import EXPORTERS
from .base import (
    ExportViolations,
    LayerBytes,
    code_source,
    fused_name,
    layer_codes,
    name_patterns,
    part_bytes,
    run_on_saved_model,
)
from .rules import RuleExporter, Rules

GPTQ_BACKENDS = ("gptq", "gptq_marlin", "gptq_cpu")
GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")


@EXPORTERS.register("gptqmodel")
@dataclass(frozen=True, slots=True)
class GPTQModelExporter(RuleExporter):
    """Writes ``quantize_config.json`` / ``config.json["quantization_config"]`` with ``dynamic``.

    Args:
        backend: ``"gptq"`` (2/3/4/8-bit), ``"gptq_marlin"`` (4/8-bit symmetric, fast) or
            ``"gptq_cpu"`` (GPTQModel's own CPU kernels: 2/3/4/8-bit, 4-bit symmetric).
    """

    backend: str = "gptq"
    name: ClassVar[str]
    suffix: ClassVar[str] = ".json"

    def __post_init__(self) -> None:
        if self.backend not in GPTQ_BACKENDS:
            raise ValueError(f"`backend` must be one of {GPTQ_BACKENDS}, got {self.backend!r}")

    def rules(self) -> Rules:
        if self.backend == "gptq_marlin":
            return Rules(
                "GPTQ Marlin",
                bits=(4, 8),
                groups=(None, 32, 64, 128),
                symmetric=(True,),
                fused=True,
            )
        if self.backend == "gptq_cpu":
            return Rules("GPTQModel on CPU", bits=(2, 3, 4, 8), fused=True)
        return Rules("GPTQ", bits=(2, 3, 4, 8), fused=True)

    def unit_problem(self, unit: Unit, fmt: QuantFormat) -> tuple[str, str] | None:
        p = RuleExporter.unit_problem(self, unit, fmt)  # slots dataclass: no bare super()
        if p is None and self.backend == "gptq_cpu" and fmt.bits == 4 and not fmt.symmetric:
            return "symmetric", (
                f"{fmt.key}: GPTQModel's 4-bit CPU kernel (TorchFusedLinear) drops zero "
                "points; 4-bit layers need a symmetric grid"
            )
        return p

    def render(self, solution: Solution) -> dict[str, Any]:
        bad = self.check(solution)
        if bad:
            raise ExportViolations(type(self).name, bad)
        weights: Counter[str] = Counter()
        by_key: dict[str, list[str]] = {}
        shards: Counter[str] = Counter()
        for u, key in zip(solution.space.units, solution.choice):
            by_key.setdefault(key, []).append(u.fqn)
            shards[str(fused_name(u.fqn))] += 1
            if not QuantFormat.parse(key).is_float:
                weights[key] += u.numel
        base = QuantFormat.parse(
            max(weights, key=lambda k: (weights[k], k)) if weights else "int4-g128-sym"
        )
        dynamic: dict[str, dict[str, Any]] = {}
        for key, names in sorted(by_key.items()):
            fmt = QuantFormat.parse(key)
            if fmt == base:
                continue
            fused = [f for n in names if (f := fused_name(n)) is not None and shards[f] > 1]
            for pattern in name_patterns([*names, *fused]):
                if fmt.is_float:
                    dynamic["-:" + pattern] = {}
                else:
                    dynamic["+:" + pattern] = {**_args(fmt), "desc_act": False}
        return {
            "quant_method": "gptq",
            "checkpoint_format": "gptq",
            **_args(base),
            "desc_act": False,
            "lm_head": False,
            "pack_dtype": "int32",
            "dynamic": dynamic,
        }


def _args(fmt: QuantFormat) -> dict[str, Any]:
    return {"bits": fmt.bits, "group_size": fmt.group_size or -1, "sym": fmt.symmetric}


@dataclass(frozen=True)
class GptqModelRun:
    """What GPTQModel built from a plan: its checkpoint folder, the float model with every
    quantized layer's weight replaced by GPTQModel's dequantized one, the logits of
    GPTQModel's own forward on the probe ids, and the bytes per layer in its checkpoint
    (``qweight``, ``qzeros``, ``scales``, ``g_idx``). With bitalloc's codes, ``unpacked``
    holds per layer what GPTQModel's loader unpacks from the checkpoint: ``(codes, zeros,
    scales)``, the codes ``[out, in]`` unsigned, zeros and scales ``[out, groups]``."""

    folder: Path
    model: Any
    logits: Any
    probe_ids: Any
    layers: list[LayerBytes]
    unpacked: dict[str, tuple[Any, Any, Any]] | None = None


def quantize_model(
    model: Any,
    solution: Solution,
    calib: Any,
    tokenizer: Any,
    folder: str | os.PathLike[str],
    *,
    codes: Any = None,
    probe_ids: Any = None,
) -> GptqModelRun:
    """Build ``solution`` as a GPTQModel checkpoint in ``folder`` (in its venv: ``make
    gptqmodel``) from the exported config, on ``calib``'s batches.

    Args:
        codes: ``None``: GPTQModel's own GPTQ quantizes every planned layer. ``"rtn"``,
            ``"gptq"`` or an instance of either backend: that backend's weights, scales and
            zero points go into the checkpoint (GPTQModel packs, saves and loads them), so
            the artifact is the plan bitalloc measured.
        probe_ids: token ids for GPTQModel's own forward (default: the first batch).

    Raises ``ExportViolations`` before any work when the plan breaks the rules."""
    import copy

    import torch
    from safetensors.torch import load_file, save_file

    from ...toolkits import gptqmodel as toolkit

    config = GPTQModelExporter().render(solution)
    backend = None if codes is None else code_source(codes, "codes")
    toolkit.python()  # ToolkitMissing names `make gptqmodel` before any work
    ids = probe_ids if probe_ids is not None else calib.batches[0]
    planted = {} if backend is None else gptq_codes(model, solution, backend, calib)

    def run(src: Path, data: Path, stage: Path, scratch: Path) -> dict[str, Any]:
        probe = scratch / "probe.safetensors"
        given = None
        if planted:
            given = scratch / "codes.safetensors"
            save_file(planted, str(given))
        toolkit.quantize(src, config, data, stage, probe, codes=given)
        return load_file(str(probe))

    folder = Path(folder)
    got = run_on_saved_model(
        model, tokenizer, calib, folder, run, tool="GPTQModel", extra={"__probe_ids__": ids.long()}
    )
    out = copy.deepcopy(model)
    with torch.no_grad():
        for u, fmt in zip(solution.space.units, solution.formats):
            if not fmt.is_float:
                out.get_submodule(u.fqn).weight.copy_(got[u.fqn])
    stored = part_bytes(sorted(folder.glob("*.safetensors")), GPTQ_PARTS)
    layers = [
        LayerBytes(u.fqn, fmt.key, fmt.nbytes(u.shape), stored[u.fqn])
        for u, fmt in zip(solution.space.units, solution.formats)
        if not fmt.is_float
    ]
    unpacked = None
    if planted:
        unpacked = {
            u.fqn: tuple(got[f"{u.fqn}.{part}"] for part in ("codes", "zeros", "scales"))
            for u, fmt in zip(solution.space.units, solution.formats)
            if not fmt.is_float
        }
    return GptqModelRun(folder, out.eval(), got["__logits__"], ids, layers, unpacked)


def gptq_codes(model: Any, solution: Solution, backend: Any, calib: Any) -> dict[str, Any]:
    """``NAME.weight`` (``W_hat``, float32), ``NAME.scale`` and ``NAME.zero`` (GPTQ's unsigned
    zero points, ``2^(bits-1)`` for a symmetric grid) for every quantized layer of the plan."""
    import torch

    out: dict[str, Any] = {}
    for layer in layer_codes(model, solution, backend, calib):
        fmt = layer.format
        if fmt.is_float:
            continue
        zero = layer.zero
        if zero is None:  # bitalloc's signed symmetric codes are GPTQ's unsigned ones - 2^(b-1)
            zero = torch.full_like(layer.scale, 2 ** (fmt.bits - 1), dtype=torch.int16)
        out[f"{layer.fqn}.weight"] = layer.weight.float().contiguous()
        out[f"{layer.fqn}.scale"] = layer.scale.float().contiguous()
        out[f"{layer.fqn}.zero"] = zero.to(torch.int16).contiguous()
    return out
