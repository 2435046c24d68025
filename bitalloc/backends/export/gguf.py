"""A plan as a real GGUF file, built and measured by llama.cpp's own tools.

1. :func:`float_gguf`: the float model as an F32 GGUF, by the tree's ``convert_hf_to_gguf.py``;
2. :func:`write_imatrix`: ``E[x^2]`` per layer input as an importance-matrix file
   ``llama-quantize --imatrix`` reads (legacy ``.dat`` layout, one call, so every value is read
   back exactly);
3. :func:`quantize`: the plan's ``--tensor-type-file`` (:class:`LlamaCppExporter`) and
   ``llama-quantize --pure``; tensors outside the plan (token embedding, norms) take
   ``default_type``/their float type;
4. :func:`tensors` reads what the file holds (type and bytes per tensor) with gguf-py, and
   :func:`kl_divergence` runs ``llama-perplexity --kl-divergence`` against the float GGUF.

Every file is written beside its target and moved in place only when the tool succeeded; a tool
that fails raises :class:`~bitalloc.toolkits.llamacpp.ToolFailed` with its last output lines.
Needs ``make llama-cpp``.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...search.solution import Solution
from ...search.space import SearchSpace
from ...toolkits import llamacpp
from .gguf_file import embedding_searched, searches_embedding
from .llamacpp import LlamaCppExporter, gguf_name


@dataclass(frozen=True, slots=True)
class GgufTensor:
    """One tensor of a GGUF file: ggml type name, stored bytes and shape (rows, cols)."""

    type: str
    nbytes: int
    shape: tuple[int, ...]


def _threads(threads: int | None) -> str:
    return str(threads or os.cpu_count() or 2)


def _over_text(
    tool: str, model: Any, text: Any, ctx: int, chunks: int | None, threads: int | None
) -> list[Any]:
    """``TOOL -m MODEL -f TEXT -c CTX [--chunks N] -t THREADS`` (imatrix and perplexity)."""
    args: list[Any] = [llamacpp.tool(tool), "-m", model, "-f", text, "-c", ctx]
    if chunks is not None:
        args += ["--chunks", chunks]
    return [*args, "-t", _threads(threads)]


def float_gguf(
    model_dir: str | os.PathLike[str], out: str | os.PathLike[str], outtype: str = "f32"
) -> Path:
    """Convert the Hugging Face folder ``model_dir`` (weights + tokenizer) to a GGUF."""
    if not (Path(model_dir) / "config.json").is_file():
        raise ValueError(
            f"`model_dir` must be a Hugging Face folder with config.json: {model_dir}"
        )
    return llamacpp.convert_hf(model_dir, out, outtype)


def imatrix_of(
    importance: Mapping[str, Any], arch: str = "llama", space: SearchSpace | None = None
) -> dict[str, np.ndarray]:
    """``{GGUF tensor name: float32 values}`` from ``{module FQN: E[x^2]}``.

    With ``space``, a unit whose weight is tied (:attr:`Unit.shares`) is written under the
    tensor the file stores: a tied ``lm_head``'s input moments become ``token_embd.weight``'s,
    which llama-quantize then uses for the token embedding."""
    stored = {} if space is None else {u.fqn: u.tensor_fqn for u in space.units}
    out = {}
    for fqn, values in importance.items():
        name = gguf_name(stored.get(fqn, fqn), arch)
        if name is None:
            raise ValueError(f"gguf-py has no GGUF tensor for {fqn!r} in arch {arch!r}")
        arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
        out[name] = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    return out


def write_imatrix(
    importance: Mapping[str, np.ndarray], path: str | os.PathLike[str], dataset: str = "bitalloc"
) -> Path:
    """Write ``{GGUF tensor name: values}`` as a legacy imatrix file (ncall 1: read back as is)."""
    for name, v in importance.items():
        if not np.isfinite(v).all():
            raise ValueError(f"importance of {name} holds NaN/inf")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<i", len(importance)))
            for name, values in importance.items():
                raw = name.encode()
                f.write(struct.pack("<i", len(raw)) + raw)
                f.write(struct.pack("<ii", 1, values.size))
                f.write(np.asarray(values, dtype="<f4").tobytes())
            f.write(struct.pack("<i", 1))
            f.write(struct.pack("<i", len(dataset.encode())) + dataset.encode())

    return llamacpp.produce(path, write)


def quantize(
    solution: Solution,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    imatrix: str | os.PathLike[str] | None = None,
    default_type: str = "q8_0",
    embedding_type: str | None = None,
    threads: int | None = None,
    arch: str = "llama",
) -> Path:
    """``llama-quantize --pure --tensor-type-file`` of ``solution`` on the float GGUF
    ``source``; unplanned quantizable tensors take ``default_type``, the token embedding
    ``embedding_type`` when given. A plan that searches the token embedding (a tied
    ``lm_head`` unit) gives it its own type in the tensor-type file; ``embedding_type`` is then
    refused, since ``--token-embedding-type`` would override the plan."""
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise ValueError(f"`source` GGUF not found: {source}")
    if out.resolve() == source.resolve():
        raise ValueError("`out` must differ from `source`")
    if embedding_type is not None and searches_embedding(solution.space, arch):
        raise ValueError(embedding_searched("embedding_type"))
    exe = llamacpp.tool("llama-quantize")
    text = LlamaCppExporter(arch=arch).render(solution)
    with tempfile.TemporaryDirectory() as tmpdir:
        types = Path(tmpdir) / "tensor-types.txt"
        types.write_text(text)
        args: list[Any] = [exe, "--pure", "--tensor-type-file", types]
        if embedding_type is not None:
            args += ["--token-embedding-type", embedding_type.upper()]
        if imatrix is not None:
            args += ["--imatrix", imatrix]
        n = _threads(threads)
        return llamacpp.produce(
            out, lambda tmp: llamacpp.run([*args, source, tmp, default_type.upper(), n])
        )


def recipe(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    ftype: str,
    *,
    pure: bool = False,
    imatrix: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> Path:
    """llama.cpp's own recipe ``ftype`` (``Q4_K_M``, ``IQ4_NL``...) of the float GGUF."""
    args: list[Any] = [llamacpp.tool("llama-quantize")]
    if pure:
        args.append("--pure")
    if imatrix is not None:
        args += ["--imatrix", imatrix]
    n = _threads(threads)
    return llamacpp.produce(out, lambda tmp: llamacpp.run([*args, source, tmp, ftype, n]))


def imatrix_from_text(
    source: str | os.PathLike[str],
    text: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
) -> Path:
    """``llama-imatrix`` of the float GGUF over ``text`` (llama.cpp's own importance matrix)."""
    args = _over_text("llama-imatrix", source, text, ctx, chunks, threads)
    args += ["--output-format", "dat"]
    return llamacpp.produce(out, lambda tmp: llamacpp.run([*args, "-o", tmp]))


def tensors(path: str | os.PathLike[str]) -> dict[str, GgufTensor]:
    """Every tensor of the GGUF file ``path``: type, stored bytes and (rows, cols)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {
        t.name: GgufTensor(
            t.tensor_type.name, int(t.n_bytes), tuple(int(d) for d in reversed(t.shape))
        )
        for t in reader.tensors
    }


def stored_weights(path: str | os.PathLike[str], names: Any = None) -> dict[str, np.ndarray]:
    """Tensors ``names`` (default: all) of the GGUF ``path`` decoded to float32 by gguf-py, in
    Hugging Face row order: llama.cpp's rope permutation of ``attn_q``/``attn_k`` is undone
    with the file's head counts."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    heads = {
        "attn_q": _field(reader, f"{arch}.attention.head_count"),
        "attn_k": _field(reader, f"{arch}.attention.head_count_kv"),
    }
    wanted = None if names is None else set(names)
    out = {}
    for t in reader.tensors:
        if wanted is not None and t.name not in wanted:
            continue
        shape = tuple(int(d) for d in reversed(t.shape))
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type)).reshape(shape)
        kind = t.name.split(".")[-2] if t.name.count(".") >= 2 else ""
        if arch == "llama" and kind in heads and heads[kind]:
            n = int(heads[kind])
            w = w.reshape(n, shape[0] // n // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
        out[t.name] = w
    missing = (wanted or set()) - set(out)
    if missing:
        raise KeyError(f"not in {Path(path).name}: {sorted(missing)}")
    return out


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def planned_bytes(solution: Solution, arch: str = "llama") -> int:
    """Bytes the plan's tensors take in the GGUF (ggml block layouts)."""
    return LlamaCppExporter(arch=arch).gguf_nbytes(solution)


def check_bytes(
    solution: Solution, path: str | os.PathLike[str], arch: str = "llama"
) -> list[str]:
    """Every planned tensor whose type or bytes in the file differ from the plan (empty = all
    match)."""
    held = tensors(path)
    exporter = LlamaCppExporter(arch=arch)
    problems = []
    for unit, key in zip(solution.space.units, solution.choice):
        name = str(gguf_name(unit.tensor_fqn, arch))
        want = exporter._type(unit, key)
        got = held.get(name)
        fmt_bytes = solution.space.formats[solution.space.keys.index(key)].nbytes(unit.shape)
        if got is None:
            problems.append(f"{name}: not in {Path(path).name}")
        elif got.type != want or got.nbytes != fmt_bytes:
            problems.append(
                f"{name}: planned {want} {fmt_bytes} B, file has {got.type} {got.nbytes} B"
            )
    return problems


@dataclass(frozen=True, slots=True)
class Kld:
    """``llama-perplexity --kl-divergence`` of a quantized GGUF against the float one."""

    mean_kld: float
    kld_err: float
    ppl: float
    ppl_base: float
    chunks: int
    ctx: int


_KLD = re.compile(r"Mean\s+KLD:\s+(?P<v>[-\d.eE+]+)\s+±\s+(?P<e>[-\d.eE+]+)")
_PPL = re.compile(r"Mean PPL\(Q\)\s+:\s+(?P<v>[-\d.eE+]+)")
_BASE = re.compile(r"Mean PPL\(base\)\s+:\s+(?P<v>[-\d.eE+]+)")


def kl_base(
    float_model: str | os.PathLike[str],
    text: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
) -> Path:
    """The float model's logits over ``text`` (``llama-perplexity --kl-divergence-base``)."""
    args = [*_over_text("llama-perplexity", float_model, text, ctx, chunks, threads), "-b", ctx]
    return llamacpp.produce(out, lambda tmp: llamacpp.run([*args, "--kl-divergence-base", tmp]))


def kl_divergence(
    model: str | os.PathLike[str],
    base: str | os.PathLike[str],
    *,
    ctx: int = 512,
    threads: int | None = None,
) -> Kld:
    """Mean KLD of ``model`` to the logits in ``base`` (its text is the one in ``base``)."""
    exe = llamacpp.tool("llama-perplexity")
    text = llamacpp.run(
        [
            exe,
            "-m",
            model,
            "--kl-divergence-base",
            base,
            "--kl-divergence",
            "-c",
            ctx,
            "-b",
            ctx,
            "-t",
            _threads(threads),
        ]
    )
    m, p, b = _KLD.search(text), _PPL.search(text), _BASE.search(text)
    if m is None or p is None or b is None:
        raise llamacpp.ToolFailed("llama-perplexity printed no KLD summary:\n" + text[-2000:])
    chunks = re.search(
        r"computing over (\d+) chunks|calculating perplexity over (\d+) chunks", text
    )
    n = next((int(g) for g in chunks.groups() if g), 0) if chunks else 0
    return Kld(float(m["v"]), float(m["e"]), float(p["v"]), float(b["v"]), n, ctx)


def file_bytes(path: str | os.PathLike[str]) -> int:
    return Path(path).stat().st_size
