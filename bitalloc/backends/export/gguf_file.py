"""Whole-file GGUF accounting: what ``llama-quantize --pure`` writes besides the plan's tensors.

A GGUF file is its header (key-value metadata, the tokenizer among it, and one info record per
tensor), padded to the file's alignment (32), then every tensor's data, each padded to the
alignment. ``llama-quantize --pure`` keeps the float file's header, adding four
``quantize.imatrix.*`` keys when given an importance matrix (the file path as passed, the
dataset name, entry and chunk counts); 1-D tensors (norms) stay F32, the token embedding takes
``--token-embedding-type`` (default: the default type) and every other 2-D weight outside the
``--tensor-type-file`` takes the default type.

- :func:`fixed_bytes`: the file's bytes that do not depend on the plan (header, unplanned
  tensors, their padding), read from the float GGUF;
- :func:`file_budget`: a :class:`~bitalloc.search.budget.Budget` over the whole file
  (``Budget.bytes(file_bytes, fixed=fixed_bytes(...))``);
- :func:`predicted_file_bytes`: the exact size of the file a plan gives (fixed bytes plus each
  planned tensor's ggml bytes, padded), to compare with the file llama-quantize writes.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ...search.budget import Budget
from ...search.formats import QuantFormat
from ...search.solution import Solution
from ...search.space import SearchSpace
from .llamacpp import gguf_name

_U32 = 4
_MAGIC = 4  # b"GGUF"
PATH_RESERVE = 255  # imatrix path bytes a search reserves before the file's path is known


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _kv(key: str, value: int | str) -> int:
    """Bytes of one GGUF key-value record (u32 or string value)."""
    size = 8 + len(key.encode()) + 4
    if isinstance(value, str):
        return size + 8 + len(value.encode())
    return size + _U32


def imatrix_keys(imatrix: str | os.PathLike[str]) -> dict[str, int | str]:
    """The ``quantize.imatrix.*`` keys llama-quantize adds for a legacy ``.dat`` imatrix file
    (the path as it will be passed on the command line)."""
    data = Path(imatrix).read_bytes()
    (n,) = struct.unpack_from("<i", data, 0)
    pos = 4
    for _ in range(n):
        (length,) = struct.unpack_from("<i", data, pos)
        pos += 4 + length
        _ncall, nval = struct.unpack_from("<ii", data, pos)
        pos += 8 + 4 * nval
    (chunks,) = struct.unpack_from("<i", data, pos)
    (dlen,) = struct.unpack_from("<i", data, pos + 4)
    dataset = data[pos + 8 : pos + 8 + dlen].decode()
    keys: dict[str, int | str] = {"quantize.imatrix.file": str(imatrix)}
    if dataset:
        keys["quantize.imatrix.dataset"] = dataset
    keys["quantize.imatrix.entries_count"] = n
    keys["quantize.imatrix.chunks_count"] = chunks
    return keys


def reserved_imatrix_keys(entries: int, dataset: str = "bitalloc") -> dict[str, int | str]:
    """The imatrix keys of a bitalloc imatrix file (``gguf.write_imatrix``: one chunk) whose
    path is not known yet, with :data:`PATH_RESERVE` bytes for the path: an upper bound."""
    return {
        "quantize.imatrix.file": "x" * PATH_RESERVE,
        "quantize.imatrix.dataset": dataset,
        "quantize.imatrix.entries_count": entries,
        "quantize.imatrix.chunks_count": 1,
    }


def _header(reader: Any) -> int:
    """Unpadded header bytes of a GGUF file: the 4-byte magic (gguf-py keeps no field for it),
    version and counts, key-values, tensor infos."""
    fields = sum(sum(p.nbytes for p in f.parts) for f in reader.fields.values())
    return _MAGIC + fields + sum(sum(p.nbytes for p in t.field.parts) for t in reader.tensors)


EMBEDDING = "token_embd.weight"


def embedding_searched(arg: str) -> str:
    """The message refusing a token-embedding type for a plan that searches the embedding."""
    return (
        f"`{arg}`: the plan searches the token embedding (its tied lm_head is a unit), so "
        "the plan's format is its type; leave it out"
    )


def searches_embedding(space: SearchSpace, arch: str = "llama") -> bool:
    """Whether a unit of ``space`` is the GGUF token embedding (a tied ``lm_head``)."""
    return any(gguf_name(u.tensor_fqn, arch) == EMBEDDING for u in space.units)


def _planned(names: Iterable[str], arch: str) -> set[str]:
    out = set()
    for fqn in names:
        name = gguf_name(fqn, arch)
        if name is None:
            raise ValueError(f"gguf-py has no GGUF tensor for {fqn!r} in arch {arch!r}")
        out.add(f"{name}")
    return out


def fixed_bytes(
    source: str | os.PathLike[str],
    space: SearchSpace,
    *,
    default_type: str = "q8_0",
    embedding_type: str | None = None,
    imatrix: str | os.PathLike[str] | Mapping[str, int | str] | None = None,
    arch: str = "llama",
) -> int:
    """Bytes of the file ``llama-quantize --pure`` makes from ``source`` for any plan over
    ``space``: the padded header (with the imatrix keys when ``imatrix`` is given: the file, or
    its keys, e.g. :func:`reserved_imatrix_keys`) and every tensor the plan does not hold, at
    the type llama-quantize gives it, padded."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    align = int(reader.alignment)
    header = _header(reader)
    if imatrix is not None:
        extra = imatrix if isinstance(imatrix, Mapping) else imatrix_keys(imatrix)
        header += sum(_kv(k, v) for k, v in extra.items() if k not in reader.fields)
    planned = _planned((u.tensor_fqn for u in space.units), arch)
    if embedding_type is not None and EMBEDDING in planned:
        raise ValueError(embedding_searched("embedding_type"))
    total = _align(header, align)
    for t in reader.tensors:
        if t.name in planned:
            continue
        shape = tuple(int(d) for d in reversed(t.shape))
        if len(shape) < 2 or not t.name.endswith(".weight"):
            nbytes = int(t.n_bytes)  # norms stay as the float file holds them
        else:
            ggml = embedding_type if t.name == EMBEDDING and embedding_type else None
            nbytes = QuantFormat.ggml_type(ggml or default_type).nbytes(shape)
        total += _align(nbytes, align)
    return total


def file_budget(
    file_bytes: int,
    source: str | os.PathLike[str],
    space: SearchSpace,
    **options: Any,
) -> Budget:
    """``Budget.bytes(file_bytes, fixed=...)``: the whole GGUF file at most ``file_bytes``
    (``options`` as :func:`fixed_bytes`; the planned tensors' own padding, under 32 bytes each,
    is not counted by the budget: see :func:`predicted_file_bytes`)."""
    return Budget.bytes(file_bytes, fixed=fixed_bytes(source, space, **options))


def predicted_file_bytes(
    solution: Solution, source: str | os.PathLike[str], **options: Any
) -> int:
    """The exact size of the GGUF ``gguf.quantize(solution, source, ...)`` writes."""
    import gguf

    align = int(gguf.GGUFReader(str(source)).alignment)
    planned = sum(
        _align(f.nbytes(u.shape), align) for u, f in zip(solution.space.units, solution.formats)
    )
    return fixed_bytes(source, solution.space, **options) + planned
