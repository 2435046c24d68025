"""llama.cpp: a ``llama-quantize --tensor-type-file`` with one GGUF type per tensor.

Each unit maps to its GGUF tensor through gguf-py's own converter map
(``gguf.get_tensor_name_map``: ``model.layers.3.mlp.down_proj`` -> ``blk.3.ffn_down.weight``) and
its format to a ggml type: a ggml format (``q4_k``, built by the ``ggml`` backend) is that
type; an integer format maps by bits: 2..6 -> ``Q2_K``..``Q6_K`` when the row length is a multiple
of 256 (QK_K), else the 32-block ``Q4_0``/``Q4_1``, ``Q5_0``/``Q5_1`` (symmetric/asymmetric);
8 -> ``Q8_0``; ``bf16``/``fp16`` -> ``BF16``/``F16``. The plan's group size is not carried: ggml
types fix their own block structure (:func:`gguf_nbytes` counts the GGUF bytes exactly).

Runtime rule checked (llama.cpp src/llama-quant.cpp ``tensor_type_fallback``): a k-quant on a
row that is not a multiple of 256 is silently replaced (Q2_K/Q3_K -> IQ4_NL, Q4_K -> Q5_0,
Q5_K -> Q5_1, Q6_K -> Q8_0, then F16 when the row is not a multiple of 32 either), so 2-, 3-
and 6-bit units on such rows, and every 7-bit unit, are violations. Patterns are fully anchored
(``^blk\\.(?:0|3)\\.ffn_down\\.weight$=q4_k``), one per tensor set, so their order never matters;
run ``llama-quantize --pure --tensor-type-file FILE in-f16.gguf out.gguf Q8_0``.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from ...search.formats import GGML_TYPES, QuantFormat
from ...search.solution import Solution
from ...search.space import Unit
from . import EXPORTERS
from .base import ExportViolations, name_patterns
from .rules import RuleExporter, Rules

QK_K, QK = 256, 32
K_TYPES = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K"}
LEGACY = {4: ("Q4_1", "Q4_0"), 5: ("Q5_1", "Q5_0"), 8: ("Q8_0", "Q8_0")}  # (asym, sym)
FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
TYPE_SIZE = {  # ggml type -> (block elements, block bytes); gguf.GGML_QUANT_SIZES
    **{t.upper(): (g.block, g.block_bytes) for t, g in GGML_TYPES.items()},
    "F16": (1, 2),
    "BF16": (1, 2),
}


def ggml_type(fmt: QuantFormat, cols: int, k_quants: bool = True) -> tuple[str, str, str]:
    """``(type, "", "")`` for the ggml type storing ``fmt`` on rows of ``cols``, else
    ``("", rule, why)`` with rule ``"bits"`` or ``"block_size"``."""
    if fmt.is_float:
        return ("BF16" if fmt.float_kind == "bf16" else "F16"), "", ""
    if fmt.is_ggml:
        block = GGML_TYPES[str(fmt.ggml)].block
        if cols % block == 0:
            return str(fmt.ggml).upper(), "", ""
        return "", "block_size", f"{fmt.key}: row length {cols} is not a multiple of {block}"
    k = K_TYPES.get(fmt.bits) if k_quants else None
    if k is not None and cols % QK_K == 0:
        return k, "", ""
    if fmt.bits in LEGACY:
        t = LEGACY[fmt.bits][int(fmt.symmetric)]
        if cols % QK == 0:
            return t, "", ""
        why = f"{fmt.key}: row length {cols} is not a multiple of {QK}; llama.cpp keeps F16"
        return "", "block_size", why
    if k is not None:
        fb = FALLBACK[k] if cols % QK == 0 else "F16"
        bpw = 8 * TYPE_SIZE[fb][1] / TYPE_SIZE[fb][0]
        return (
            "",
            "block_size",
            (
                f"{fmt.key}: row length {cols} is not a multiple of {QK_K} (needed by {k}); "
                f"llama-quantize would store {fb} ({bpw:g} bits/weight) instead"
            ),
        )
    extra = " without k-quants" if fmt.bits in K_TYPES else ""
    return "", "bits", f"{fmt.key}: llama.cpp has no {fmt.bits}-bit type{extra}"


@functools.lru_cache(maxsize=32)
def _name_map(arch: str, n_blocks: int) -> Any:
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_blocks)


def gguf_name(fqn: str, arch: str = "llama") -> str | None:
    """GGUF tensor name of the weight of HF module ``fqn`` (None when the converter has none)."""
    m = re.search(r"\.(\d+)\.", fqn)
    blocks = 64 * (int(m[1]) // 64 + 1) if m else 1
    base = _name_map(arch, blocks).get_name(fqn)
    return None if base is None else f"{base}.weight"


@EXPORTERS.register("llama.cpp")
@dataclass(frozen=True, slots=True)
class LlamaCppExporter(RuleExporter):
    """Writes a ``--tensor-type-file`` for ``llama-quantize``.

    Args:
        arch: gguf-py architecture (``gguf.MODEL_ARCH`` member, lower case) for tensor names.
        k_quants: use ``Q2_K``..``Q6_K`` where rows allow; ``False`` = 32-block types only.
    """

    arch: str = "llama"
    k_quants: bool = True
    name: ClassVar[str]
    suffix: ClassVar[str] = ".txt"

    def __post_init__(self) -> None:
        import gguf

        if not isinstance(self.arch, str) or self.arch.upper() not in gguf.MODEL_ARCH.__members__:
            raise ValueError(
                f"`arch` must be a gguf.MODEL_ARCH name such as 'llama' or 'qwen2', got "
                f"{self.arch!r}"
            )

    def rules(self) -> Rules:
        return Rules("llama.cpp", bits=(2, 3, 4, 5, 6, 8), ggml=True, tied=True, embeddings=True)

    def unit_problem(self, unit: Unit, fmt: QuantFormat) -> tuple[str, str] | None:
        if gguf_name(unit.tensor_fqn, self.arch) is None:
            return "name", (
                f"gguf-py has no GGUF tensor for {unit.tensor_fqn!r} in arch {self.arch!r}"
            )
        p = self.rules().problem(fmt)
        if p is not None:
            return p
        t, rule, why = ggml_type(fmt, math.prod(unit.shape[1:]), self.k_quants)
        return None if t else (rule, why)

    def types(self, solution: Solution) -> dict[str, str]:
        """GGUF tensor name -> ggml type name for every unit of ``solution``."""
        return {
            str(gguf_name(u.tensor_fqn, self.arch)): self._type(u, key)
            for u, key in zip(solution.space.units, solution.choice)
        }

    def _type(self, unit: Unit, key: str) -> str:
        t, _, why = ggml_type(QuantFormat.parse(key), math.prod(unit.shape[1:]), self.k_quants)
        if not t:
            raise ValueError(f"{unit.name}: {why}")
        return t

    def render(self, solution: Solution) -> str:
        bad = self.check(solution)
        if bad:
            raise ExportViolations(type(self).name, bad)
        by_type: dict[str, list[str]] = {}
        for tensor, t in self.types(solution).items():
            by_type.setdefault(t, []).append(tensor)
        lines = [
            f"{p}={t.lower()}"
            for t, names in sorted(by_type.items())
            for p in name_patterns(names, start="^", end="$")
        ]
        return "\n".join(lines) + "\n"

    def gguf_nbytes(self, solution: Solution) -> int:
        """Exact bytes of the planned tensors in the GGUF file (ggml blocks, not the plan's)."""
        total = 0
        for u, key in zip(solution.space.units, solution.choice):
            block, size = TYPE_SIZE[self._type(u, key)]
            total += u.shape[0] * (math.prod(u.shape[1:]) // block) * size
        return total
