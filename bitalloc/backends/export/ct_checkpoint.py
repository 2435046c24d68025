"""A plan as a real compressed-tensors checkpoint (``pack-quantized``, mixed ``config_groups``).

:func:`save_checkpoint` quantizes the planned layers with the rtn or gptq backend
(``keep_codes=True``), hands each layer's ``W_hat``, fp16 scales and zero points to
compressed-tensors' own ``PackedQuantizationCompressor`` (which re-derives the integer codes
from them, exactly, and packs them into int32), and writes ``model.safetensors`` plus a
``config.json`` whose ``quantization_config`` is :class:`CompressedTensorsExporter`'s. The
folder is written as one set (staged beside it, then swapped in): nothing is left half
written and files already in the folder (a tokenizer) are kept.

:func:`load_checkpoint` builds the model the toolkits build from that folder:

- ``via="transformers"``: ``AutoModelForCausalLM.from_pretrained`` (transformers'
  compressed-tensors quantizer). With transformers 5.24 and compressed-tensors 0.20 this loads
  symmetric groups only: for asymmetric groups the quantizer compresses its empty model on the
  meta device, where ``PackedQuantizationCompressor`` leaves ``weight_zero_point`` unpacked
  (``[N, G]``) while the file holds it packed (``[ceil(N*bits/32), G]``), and loading stops on
  the size mismatch (vllm-project/llm-compressor#1618);
- ``via="compressed-tensors"``: the float model built from ``config.json``, then every
  quantized layer decompressed from the file by compressed-tensors' own
  ``PackedQuantizationCompressor.decompress`` under the scheme its ``QuantizationConfig``
  assigns (``apply_quantization_config``): any plan, symmetric or not;
- ``"auto"`` (default): transformers when every group is symmetric, else compressed-tensors.

:func:`stored_bytes` reads each quantized layer's bytes from the safetensors header; they equal
the plan's :meth:`QuantFormat.nbytes` plus the 16-byte ``weight_shape`` (int64 ``[2]``) that
compressed-tensors stores per layer, when rows and columns are multiples of 32 / bits (codes
and zero points are packed without padding: ``ceil(cols*bits/32)`` int32 per row, zero points
``ceil(rows*bits/32)`` int32 per group column).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...search._io import atomic_write_folder, read_json
from ...search.solution import Solution
from .base import (
    ExportViolations,
    LayerBytes,
    code_source,
    layer_codes,
    part_bytes,
    run_on_saved_model,
)
from .compressed_tensors import CompressedTensorsExporter, weight_args

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
SHAPE_BYTES = 16  # compressed-tensors' weight_shape: int64 [2] per layer
VIA = ("auto", "transformers", "compressed-tensors")
_PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")


def save_checkpoint(
    model: nn.Module,
    solution: Solution,
    folder: str | os.PathLike[str],
    *,
    quantizer: Any = "rtn",
    calib: Any = None,
    runtime: str = "vllm",
    tokenizer: Any = None,
) -> list[LayerBytes]:
    """Write ``solution`` applied to ``model`` as a compressed-tensors checkpoint in ``folder``.

    Args:
        model: the float Hugging Face causal LM (left unchanged).
        solution: the plan; it must pass :class:`CompressedTensorsExporter(runtime)`'s rules
            (``ExportViolations`` lists every unit that does not, before any work).
        quantizer: ``"rtn"``, ``"gptq"`` (needs ``calib``) or an instance of either backend.
        calib: calibration batches for the quantizer.
        runtime: ``"vllm"`` (Marlin's 4/8-bit grids, fused shards agree) or
            ``"transformers"`` (2..8-bit).
        tokenizer: saved into the folder too when given.

    Returns the bytes of every quantized layer, planned and stored (:class:`LayerBytes`).
    """
    from safetensors.torch import save_file

    exporter = CompressedTensorsExporter(runtime=runtime)
    bad = exporter.check(solution)
    if bad:
        raise ExportViolations(type(exporter).name, bad)
    backend = code_source(quantizer)
    state, planned = _compressed_state(model, solution, backend, calib)
    config = model.config.to_dict()
    config["quantization_config"] = exporter.render(solution)
    writes = {
        WEIGHTS: lambda p: save_file(state, str(p), metadata={"format": "pt"}),
        CONFIG: lambda p: Path(p).write_text(json.dumps(config, indent=2, sort_keys=True)),
    }
    with tempfile.TemporaryDirectory() as extra:
        if tokenizer is not None:
            for name in tokenizer.save_pretrained(extra):
                src = Path(name)
                if src.is_file() and src.name not in writes:
                    writes[src.name] = _copier(src)
        atomic_write_folder(folder, writes)
    return _compare(planned, stored_bytes(folder))


def _copier(src: Path) -> Any:
    import shutil

    return lambda p: shutil.copyfile(src, p)


def _compressed_state(
    model: nn.Module, solution: Solution, backend: Any, calib: Any
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, int]]]:
    """The checkpoint's tensors (quantized layers packed by compressed-tensors, float units at
    their float kind, the rest as the model holds them) and per layer ``(format, bytes)``."""
    import torch
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    state = _unique_state(model)
    planned: dict[str, tuple[str, int]] = {}
    for layer in layer_codes(model, solution, backend, calib):
        fqn, fmt, weight = layer.fqn, layer.format, layer.weight
        key = f"{fqn}.weight"
        if fmt.is_float:
            kind = torch.bfloat16 if fmt.float_kind == "bf16" else torch.float16
            state[key] = weight.to(kind)
            continue
        local = {"weight": weight, "weight_scale": layer.scale}
        if not fmt.symmetric:  # bitalloc's codes are 0..2^b-1; compressed-tensors' signed
            local["weight_zero_point"] = (layer.zero - 2 ** (fmt.bits - 1)).to(torch.int8)
        scheme = QuantizationScheme(targets=[fqn], weights=QuantizationArgs(**weight_args(fmt)))
        del state[key]
        for part, value in PackedQuantizationCompressor.compress(local, scheme).items():
            state[f"{fqn}.{part}"] = value.contiguous()
        planned[fqn] = (fmt.key, fmt.nbytes(tuple(weight.shape)))
    return state, planned


def _unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with tied tensors once (the first name, e.g. ``embed_tokens``)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.numel())
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().clone().contiguous()
    return out


def stored_bytes(folder: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes per quantized layer in the folder's safetensors (packed codes, scales, zero
    points and ``weight_shape``), read from the file's header."""
    return part_bytes([Path(folder) / WEIGHTS], _PARTS)


def _compare(planned: dict[str, tuple[str, int]], stored: dict[str, int]) -> list[LayerBytes]:
    missing = sorted(set(planned) - set(stored))
    if missing:
        raise RuntimeError(f"the checkpoint lacks quantized layers {missing[:5]}")
    return [LayerBytes(n, k, b, stored[n]) for n, (k, b) in planned.items()]


def groups_symmetric(folder: str | os.PathLike[str]) -> bool:
    """Whether every config group of the checkpoint quantizes weights symmetrically."""
    config = read_json(Path(folder) / CONFIG, "checkpoint config")
    groups = config.get("quantization_config", {}).get("config_groups", {})
    return all(g.get("weights", {}).get("symmetric", True) for g in groups.values())


def load_checkpoint(
    folder: str | os.PathLike[str], *, via: str = "auto", dtype: Any = None
) -> nn.Module:
    """The model the toolkits build from a compressed-tensors ``folder`` (float32 by default;
    see the module docstring for ``via``)."""
    import torch

    if via not in VIA:
        raise ValueError(f"`via` must be one of {VIA}, got {via!r}")
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG} and {WEIGHTS}")
    dtype = torch.float32 if dtype is None else dtype
    symmetric = groups_symmetric(folder)
    if via == "auto":
        via = "transformers" if symmetric else "compressed-tensors"
    if via == "transformers":
        if not symmetric:
            raise ValueError(
                "transformers cannot load asymmetric pack-quantized groups with the installed "
                "compressed-tensors (zero points packed on disk, unpacked on meta): "
                "use via='compressed-tensors'"
            )
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    return _decompressed(folder, dtype)


def _decompressed(folder: Path, dtype: torch.dtype) -> nn.Module:
    import torch
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    qc = QuantizationConfig.model_validate(config.quantization_config)
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = load_file(str(folder / WEIGHTS))
    apply_quantization_config(model, qc, run_compressed=False)  # each layer's scheme, on meta
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or f"{name}.weight_packed" not in state:
            continue
        local = {p: state.pop(f"{name}.{p}") for p in _PARTS if f"{name}.{p}" in state}
        # the scale in the model's dtype, as transformers' quantizer holds it (fp16 on disk)
        local["weight_scale"] = local["weight_scale"].to(dtype)
        state[f"{name}.weight"] = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
    float_model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = float_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied(float_model)]
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not fit the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}"
        )
    float_model.tie_weights()
    return float_model.eval()


def _tied(model: nn.Module) -> set[str]:
    """Names whose tensor is another name's (the tied ``lm_head.weight``)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            tied.add(name)
        seen.setdefault(t.data_ptr(), name)
    return tied


def oneshot_checkpoint(
    model: nn.Module,
    solution: Solution,
    calib: Any,
    tokenizer: Any,
    folder: str | os.PathLike[str],
    *,
    modifier: str = "gptq",
    runtime: str = "vllm",
) -> list[LayerBytes]:
    """The checkpoint llm-compressor's own ``oneshot`` writes for ``solution``: the exported
    ``config_groups``/``ignore`` as a ``GPTQModifier`` (``modifier="gptq"``) or
    ``QuantizationModifier`` (``"rtn"``: min-max) recipe, run in llm-compressor's venv (``make
    llm-compressor``) on ``calib``'s batches. Load it with :func:`load_checkpoint`; returns
    the planned and stored bytes per quantized layer."""
    from ...toolkits import llmcompressor

    exporter = CompressedTensorsExporter(runtime=runtime)
    config = exporter.render(solution)  # ExportViolations before any work
    if modifier not in llmcompressor.MODIFIERS:
        raise ValueError(f"`modifier` must be one of {llmcompressor.MODIFIERS}, got {modifier!r}")
    llmcompressor.python()  # ToolkitMissing names `make llm-compressor` before any work
    planned = {
        u.fqn: (f.key, f.nbytes(u.shape))
        for u, f in zip(solution.space.units, solution.formats)
        if not f.is_float
    }

    def run(src: Path, data: Path, stage: Path, scratch: Path) -> None:
        llmcompressor.oneshot(src, config, data, stage, modifier=modifier)

    run_on_saved_model(model, tokenizer, calib, folder, run, tool="llm-compressor")
    return _compare(planned, stored_bytes(folder))
