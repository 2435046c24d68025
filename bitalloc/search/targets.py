"""Deployment targets: the formats a runtime stores without falling back, and how it counts.

``SearchSpace.from_model(model, target="llama.cpp")`` offers each unit only what that runtime
stores as asked, so a plan searched for a target exports with zero violations and its bytes are
the artifact's bytes.

- ``llama.cpp``: ggml block types, built by the ``ggml`` backend with ggml's own quantizer.
  K-quants (``q2_k`` .. ``q6_k``, ``iq4_xs``) need rows that are a multiple of 256; on other rows
  only the 32-block types (``q4_0``/``q4_1``/``q5_0``/``q5_1``/``q8_0``, ``iq4_nl``) and ``fp16``
  are offered. Bytes are ggml's block layouts (``Q4_K``: 144 bytes per 256 weights).
- ``compressed-tensors``: what vLLM's Marlin kernels serve: 4- and 8-bit integers with groups of
  32/64/128 or per-channel, q/k/v and gate/up tied (vLLM fuses them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .formats import QuantFormat, parse_formats

LLAMACPP_MENU = (
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
    "iq4_xs",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "iq4_nl",
    "q8_0",
    "fp16",
)
MARLIN_MENU = tuple(
    f"int{b}-{g}{s}"
    for b in (4, 8)
    for g in ("g32", "g64", "g128", "pc")
    for s in ("-sym", "")
    if not (b == 8 and not s)
)


@dataclass(frozen=True, slots=True)
class Target:
    """A runtime's storable formats.

    Args:
        name: the target (also its exporter's name).
        formats: the default menu (format keys); each unit keeps those its rows can hold.
        backend: the backend that builds exactly what the runtime stores.
        fused: whether the runtime fuses q/k/v and gate/up (they get ``tie="auto"``).
        tied: whether it stores a weight shared by two modules (a tied ``lm_head`` and the
            token embedding) as one quantized tensor, so that weight can be a searched unit.
        embeddings: whether it stores a quantized ``nn.Embedding`` table (:attr:`Unit.embedding`).
    """

    name: str
    formats: tuple[str, ...]
    backend: str
    fused: bool = False
    tied: bool = False
    embeddings: bool = False

    def problem(self, fmt: QuantFormat) -> str | None:
        """Why this target cannot store ``fmt`` (any shape), or None."""
        if fmt.is_sparse:
            return f"{fmt.key}: {self.name} stores no sparse weights"
        if self.name == "llama.cpp":
            ok = fmt.is_ggml or fmt.is_float
            return None if ok else f"{fmt.key}: llama.cpp stores ggml types ({_short(self)})"
        if (
            fmt.is_ggml
            or fmt.is_float
            or fmt.bits not in (4, 8)
            or fmt.group_size
            not in (
                None,
                32,
                64,
                128,
            )
        ):
            return f"{fmt.key}: vLLM's Marlin kernels serve {_short(self)}"
        return None

    def menu(self, formats: Sequence[str | QuantFormat] | str | None) -> tuple[QuantFormat, ...]:
        """``formats`` checked against the target (None = the default menu)."""
        parsed = parse_formats(self.formats if formats is None else formats)
        bad = [p for f in parsed if (p := self.problem(f))]
        if bad:
            raise ValueError(f"`formats` for target {self.name!r}: " + "; ".join(bad))
        return parsed


def _short(t: Target) -> str:
    return ", ".join(t.formats[:6]) + ", ..."


TARGETS = {
    "llama.cpp": Target("llama.cpp", LLAMACPP_MENU, backend="ggml", tied=True, embeddings=True),
    "compressed-tensors": Target("compressed-tensors", MARLIN_MENU, backend="gptq", fused=True),
}


def get_target(name: str | Target) -> Target:
    """The :class:`Target` called ``name``; ValueError listing the valid names."""
    if isinstance(name, Target):
        return name
    if name not in TARGETS:
        raise ValueError(f"`target` must be one of {', '.join(TARGETS)}, got {name!r}")
    return TARGETS[name]
