"""Export one plan to every target: violations found, units raised by --fix, bytes impact.

    python benchmarks/export_targets.py runs/plan-3.0.json

For llama.cpp it also prints the tensor bytes llama-quantize would actually store (ggml
blocks), for the plan as given (k-quant fallbacks applied the way llama-quant.cpp does) and
after ``fix``.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

from bitalloc.backends.export import EXPORTERS
from bitalloc.backends.export.llamacpp import FALLBACK, K_TYPES, QK, TYPE_SIZE, ggml_type
from bitalloc.search.formats import QuantFormat
from bitalloc.search.solution import Solution

VARIANTS = (
    ("compressed-tensors", {}),
    ("compressed-tensors", {"runtime": "transformers"}),
    ("llama.cpp", {}),
    ("torchao", {}),
    ("gptqmodel", {}),
    ("gptqmodel", {"backend": "gptq_marlin"}),
    ("modelopt", {}),
    ("modelopt", {"deploy": False}),
    ("hqq", {}),
    ("hqq", {"runtime": "vllm"}),
)


def llama_quantize_bytes(sol: Solution) -> int:
    """Bytes llama-quantize stores for the plan's k-quant types, fallbacks included."""
    total = 0
    for u, key in zip(sol.space.units, sol.choice):
        fmt, cols = QuantFormat.parse(key), math.prod(u.shape[1:])
        t, _, _ = ggml_type(fmt, cols)
        if not t and fmt.bits in K_TYPES:
            t = FALLBACK[K_TYPES[fmt.bits]] if cols % QK == 0 else "F16"
        block, size = TYPE_SIZE[t or "F16"]
        total += u.shape[0] * (cols // block) * size
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plan", nargs="?", default="runs/plan-3.0.json")
    args = p.parse_args()
    sol = Solution.load(args.plan)
    print(
        f"plan {args.plan}: {len(sol.space)} units, {sol.nbytes:,} bytes, {sol.avg_bits:.4f} bits"
    )
    print(
        "| target | options | violations (by rule) | units raised | bytes after fix | avg bits |"
    )
    print("|---|---|---|---|---|---|")
    for name, opts in VARIANTS:
        exp = EXPORTERS.get(name, **opts)
        bad = exp.check(sol)
        rules = ", ".join(f"{r} {n}" for r, n in Counter(v.rule for v in bad).most_common())
        try:
            fixed = exp.fix(sol)
        except ValueError as e:
            print(f"| {name} | {opts or ''} | {len(bad)} ({rules}) | unfixable: {e} | | |")
            continue
        raised = sum(a != b for a, b in zip(sol.choice, fixed.choice))
        change = 100.0 * (fixed.nbytes - sol.nbytes) / sol.nbytes
        print(
            f"| {name} | {opts or ''} | {len(bad)}{f' ({rules})' if bad else ''} | {raised} | "
            f"{fixed.nbytes:,} ({change:+.1f}%) | {fixed.avg_bits:.3f} |"
        )
        if name == "llama.cpp":
            lc = exp
            gguf_fixed = lc.gguf_nbytes(fixed)
    print(
        f"llama.cpp GGUF tensor bytes: plan as given {llama_quantize_bytes(sol):,} "
        f"(fallbacks applied by llama-quantize), fixed plan {gguf_fixed:,}"
    )


if __name__ == "__main__":
    main()
