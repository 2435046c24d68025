"""The Exporter protocol: check a plan against a toolkit's runtime rules, fix it, render it.

An exporter turns a :class:`~bitalloc.search.solution.Solution` into the per-layer config of
another toolkit (compressed-tensors ``quantization_config``, a llama.cpp ``--tensor-type-file``,
torchao ``FqnToConfig``, GPTQModel ``dynamic``, ModelOpt ``quant_cfg``, HQQ ``dynamic_config``).
Schemas and runtime rules: ``shared/reference/exports.md``.

- ``check(solution)`` lists every :class:`Violation` of the target's rules (fused q/k/v and
  gate/up sharing one format, supported bits and group sizes, block-size fallbacks, formats
  within one layer, sparsity);
- ``fix(solution)`` raises the offending units to the cheapest supported format that never
  lowers their bits (see :mod:`bitalloc.backends.export.rules`);
- ``render(solution)`` returns the target's config (a dict or text); ``serialize`` turns it
  into the file content written with suffix ``suffix``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from ...search.formats import QuantFormat
from ...search.solution import Solution


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken runtime rule.

    Args:
        unit: the unit, layer or fused group concerned.
        rule: ``"fused"``, ``"channels"``, ``"tag"``, ``"bits"``, ``"group_size"``,
            ``"symmetric"``, ``"block_size"``, ``"sparsity"``, ``"name"``, ``"tied"`` or
            ``"embedding"``.
        message: what is wrong and what the target accepts.
        fixable: whether :meth:`Exporter.fix` can repair it by raising formats.
    """

    unit: str
    rule: str
    message: str
    fixable: bool = True

    def __str__(self) -> str:
        return f"{self.unit}: [{self.rule}] {self.message}"


class ExportViolations(ValueError):
    """The plan breaks the target's runtime rules; ``violations`` lists every one."""

    def __init__(self, target: str, violations: Sequence[Violation]) -> None:
        self.target = target
        self.violations = list(violations)
        head = f"the plan breaks {len(self.violations)} rule(s) of {target}"
        body = "; ".join(str(v) for v in self.violations[:8])
        more = f" (+{len(self.violations) - 8} more)" if len(self.violations) > 8 else ""
        super().__init__(f"{head}: {body}{more}; pass fix=True (--fix) to raise those units")


@runtime_checkable
class Exporter(Protocol):
    """Writes a plan as another toolkit's per-layer quantization config."""

    name: ClassVar[str]
    suffix: ClassVar[str]

    def check(self, solution: Solution) -> list[Violation]:
        """Every violation of the target's runtime rules (empty = exportable)."""
        ...

    def fix(self, solution: Solution) -> Solution:
        """A plan that passes :meth:`check`, raising offending units, never lowering bits."""
        ...

    def render(self, solution: Solution) -> str | dict[str, Any]:
        """The target's config for a plan that passes :meth:`check`."""
        ...

    def serialize(self, rendered: str | dict[str, Any]) -> str:
        """File content of ``rendered``."""
        ...


def require_plan(solution: Solution) -> None:
    """Raise unless ``solution`` is a Solution with an assignment."""
    if not isinstance(solution, Solution):
        raise TypeError(f"`solution` must be a Solution, got {type(solution).__name__}")
    if not solution.success:
        raise ValueError(
            f"cannot export a plan with status {solution.status.value}: {solution.message}"
        )


def to_json(rendered: str | dict[str, Any]) -> str:
    """JSON text (indent 1, trailing newline) of a dict; text unchanged."""
    if isinstance(rendered, str):
        return rendered
    return json.dumps(rendered, indent=1) + "\n"


def raised_units(before: Solution, after: Solution) -> list[tuple[str, str, str]]:
    """``(unit, old key, new key)`` for every unit whose format ``after`` changed."""
    old = dict(zip(before.space.names, before.choice))
    return [(n, old[n], k) for n, k in zip(after.space.names, after.choice) if old.get(n) != k]


# ---------------------------------------------------------------------- names
_FUSED = (
    (re.compile(r"^(?P<p>(?:.*\.)?(?:self_attn|attention|attn)\.)(?:q|k|v)_proj$"), "qkv_proj"),
    (re.compile(r"^(?P<p>(?:.*\.)?(?:mlp|feed_forward)\.)(?:gate|up)_proj$"), "gate_up_proj"),
)
_INDEXED = re.compile(r"^(?P<pre>.*?\.)(?P<idx>\d+)\.(?P<post>.+)$")


def fused_name(fqn: str) -> str | None:
    """Name of the fused module a runtime builds from ``fqn`` (vLLM/TensorRT-LLM), or None.

    ``model.layers.3.self_attn.k_proj`` -> ``model.layers.3.self_attn.qkv_proj``;
    ``model.layers.3.mlp.up_proj`` -> ``model.layers.3.mlp.gate_up_proj`` (HF Llama naming).
    """
    for pattern, fused in _FUSED:
        m = pattern.match(fqn)
        if m:
            return m["p"] + fused
    return None


def is_sparse(fmt: QuantFormat) -> bool:
    """Whether ``fmt`` prunes weights (``sparsity``/``n_m`` fields, when the format has them)."""
    sparsity = getattr(fmt, "sparsity", None)
    if sparsity not in (None, 0, 0.0, "", "none", "dense"):
        return True
    return getattr(fmt, "n_m", None) not in (None, (), "")


def _alt(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def name_patterns(names: Iterable[str], *, start: str = "", end: str = "$") -> list[str]:
    """Compact regexes matching exactly ``names`` (and nothing else of the same shape).

    Names that differ only in their first ``.N.`` index and end share one pattern:
    ``model.layers.0.mlp.down_proj`` + ``model.layers.7.mlp.down_proj`` ->
    ``model\\.layers\\.(?:0|7)\\.mlp\\.down_proj$``; ends of the same index set merge into an
    alternation. ``start``/``end`` anchor the patterns.
    """
    templates: dict[tuple[str, str], set[int]] = {}
    literal: list[str] = []
    for name in dict.fromkeys(names):
        m = _INDEXED.match(name)
        if m is None:
            literal.append(name)
        else:
            templates.setdefault((m["pre"], m["post"]), set()).add(int(m["idx"]))
    merged: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for (pre, post), idx in templates.items():
        merged.setdefault((pre, tuple(sorted(idx))), []).append(post)
    out = [start + re.escape(n) + end for n in literal]
    for (pre, idx), posts in merged.items():
        common = _common_head(posts)
        body = re.escape(pre) + _alt([str(i) for i in idx]) + r"\." + re.escape(common)
        body += _alt([re.escape(p[len(common) :]) for p in sorted(posts)])
        out.append(start + body + end)
    return out


def _common_head(names: list[str]) -> str:
    """Longest shared prefix of ``names`` that ends at a dot (``""`` for one name)."""
    if len(names) < 2:
        return ""
    head = names[0]
    for n in names[1:]:
        while not n.startswith(head):
            head = head[:-1]
    return head[: head.rfind(".") + 1]


CODE_SOURCES = ("rtn", "gptq")


@dataclass(frozen=True, slots=True)
class LayerBytes:
    """One layer a toolkit quantized: its format, the plan's bytes and what the toolkit's
    artifact holds for it (``stored - planned`` is the toolkit's layout overhead)."""

    name: str
    format: str
    planned: int
    stored: int

    @property
    def overhead(self) -> int:
        return self.stored - self.planned


def run_on_saved_model(
    model: Any,
    tokenizer: Any,
    calib: Any,
    folder: str | os.PathLike[str],
    run: Callable[[Path, Path, Path, Path], Any],
    *,
    tool: str,
    extra: Mapping[str, Any] | None = None,
) -> Any:
    """Hand a toolkit that runs in its own venv what it reads from disk, and keep only a
    complete result: ``model`` and ``tokenizer`` saved to a scratch Hugging Face folder,
    ``calib``'s batches (``batch_i``, plus ``extra`` tensors) in a safetensors file, then
    ``run(model_dir, calib_file, stage, scratch)``; ``stage`` is moved onto ``folder`` only
    when it returns. ``folder`` must not exist. Returns what ``run`` returns."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"`folder` {folder} exists; {tool} writes a new checkpoint")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        src = scratch / "float"
        model.save_pretrained(src)
        tokenizer.save_pretrained(src)
        tensors = {f"batch_{i:04d}": b.long().clone() for i, b in enumerate(calib.batches)}
        tensors.update({k: v.clone() for k, v in (extra or {}).items()})
        data = scratch / "calib.safetensors"
        save_file(tensors, str(data))
        stage = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(stage, ignore_errors=True)
        try:
            result = run(src, data, stage, scratch)
            os.replace(stage, folder)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return result


def tensor_bytes(*tensors: Any) -> int:
    """Bytes of plain tensors (``numel * element_size``)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def part_bytes(files: Iterable[str | os.PathLike[str]], parts: Iterable[str]) -> dict[str, int]:
    """Bytes per layer of the tensors named ``LAYER.PART`` (``PART`` in ``parts``) in
    safetensors ``files``, read from their headers (no tensor is loaded)."""
    from safetensors import safe_open

    sizes = {"I64": 8, "F64": 8, "I32": 4, "F32": 4, "F16": 2, "BF16": 2, "I16": 2}
    wanted = set(parts)
    out: dict[str, int] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                layer, _, part = name.rpartition(".")
                if part in wanted:
                    t = f.get_slice(name)
                    n = math.prod(t.get_shape())
                    out[layer] = out.get(layer, 0) + n * sizes.get(t.get_dtype(), 1)
    return out


def code_source(quantizer: Any, arg: str = "quantizer") -> Any:
    """The rtn or gptq backend (a name or an instance) that keeps its codes, scales and zero
    points (``keep_codes=True``): what a toolkit's tensors are filled with."""
    import dataclasses

    from .. import BACKENDS

    if isinstance(quantizer, str):
        if quantizer not in CODE_SOURCES:
            raise ValueError(f"`{arg}` must be one of {CODE_SOURCES}, got {quantizer!r}")
        return BACKENDS.get(quantizer, keep_codes=True)
    if getattr(type(quantizer), "name", None) not in CODE_SOURCES:
        raise TypeError(
            f"`{arg}` must be one of {CODE_SOURCES} or an instance of their backends, "
            f"got {type(quantizer).__name__}"
        )
    return dataclasses.replace(quantizer, keep_codes=True)


@dataclass(frozen=True)
class LayerCodes:
    """One planned layer as a code source left it: ``weight`` is ``W_hat`` and ``codes`` its
    integer codes (int16, signed for a symmetric grid), both ``[out, in]``; ``scale`` (fp16) and
    ``zero`` (``None`` for a symmetric grid) are ``[out, groups]``. A float format has only
    ``weight``."""

    fqn: str
    format: QuantFormat
    weight: Any
    codes: Any
    scale: Any
    zero: Any


def layer_codes(model: Any, solution: Solution, backend: Any, calib: Any) -> list[LayerCodes]:
    """Every planned layer of ``solution`` quantized by ``backend`` (a :func:`code_source`),
    channel slices joined in row order; ``model`` is restored before this returns."""
    import torch

    layers: dict[str, list[tuple[int, str, QuantFormat]]] = {}
    for u, fmt in zip(solution.space.units, solution.formats):
        start = (u.channels or (0, u.shape[0]))[0]
        layers.setdefault(u.fqn, []).append((start, u.name, fmt))
    handle = backend.apply(model, solution, calib=calib)
    try:
        kept = handle.tensors
        out = []
        for fqn, parts in layers.items():
            parts.sort()
            fmt = parts[0][2]
            qs = [kept[name] for _, name, _ in parts]
            weight = torch.cat([q.weight for q in qs]).contiguous()
            if fmt.is_float:
                out.append(LayerCodes(fqn, fmt, weight, None, None, None))
                continue
            codes = torch.cat([q.codes.reshape(q.codes.shape[0], -1) for q in qs])
            scale = torch.cat([q.scale for q in qs])
            zero = None if fmt.symmetric else torch.cat([q.zero for q in qs])
            out.append(LayerCodes(fqn, fmt, weight, codes, scale, zero))
        return out
    finally:
        handle.restore()
