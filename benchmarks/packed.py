"""Packed storage on SmolLM2-135M: memory before/after, measured vs predicted bytes, and
held-out perplexity of the packed model against the fake-quantized (rtn) one.

For each plan (a fisher + ILP plan at 3.5 avg bits over dense int formats, and one with 2:4
sparse formats in the space) the script applies the plan twice, with backend ``rtn`` and with
backend ``packed``, saves the packed checkpoint (safetensors) and prints a markdown table.

    python benchmarks/packed.py [--windows 16] [--n-samples 16] [--seq-len 512] [--bits 3.5]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

import bitalloc as ba
from bitalloc.backends.packed import checkpoint_nbytes, save_packed
from bitalloc.backends.packed_linear import PackedLinear
from bitalloc.data import calibration, evaluate_lm, windows
from bitalloc.models import cache_dir, load

PLANS = {
    "dense": ("int2-g64", "int3-g64", "int4-g64", "int8-g64"),
    # 2:4 at b bits costs b/2 + 1 bits before scales: int4-g64-s2:4 is 3.3125 bpw
    "sparse": ("int4-g64-s2:4", "int8-g64-s2:4", "int4-g64", "int8-g64"),
}


def weight_bytes(model: torch.nn.Module, fqns: set[str]) -> int:
    """Bytes of the planned layers' weight storage (float weight, or the packed tensors)."""
    total = 0
    for name, mod in model.named_modules():
        if name in fqns:
            w = getattr(mod, "weight", None)
            total += mod.nbytes if isinstance(mod, PackedLinear) else w.numel() * w.element_size()
    return total


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer (shared tensors once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=16, help="held-out Wikipedia windows")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--n-samples", type=int, default=16, help="calibration windows")
    ap.add_argument("--bits", type=float, default=3.5)
    ap.add_argument("--estimator", default="fisher")
    args = ap.parse_args()

    model, tok = load("smollm2-135m")
    calib = calibration(tok, args.n_samples, args.seq_len)
    heldout = windows(tok, "wikipedia-heldout", args.seq_len, args.windows)
    print(
        f"SmolLM2-135M ({next(model.parameters()).dtype}), CPU, {torch.get_num_threads()} "
        f"threads; {args.estimator} + ilp at {args.bits} avg bits; calibration "
        f"{args.n_samples} x {args.seq_len} wikipedia-calib; held-out {args.windows} x "
        f"{args.seq_len} wikipedia-heldout.\n"
    )
    print(
        "| plan | formats (units) | linear weights before | after (packed) | predicted | "
        "checkpoint tensors | file | whole model before -> after | ppl rtn | ppl packed | "
        "KL(rtn, packed) | eval s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, formats in PLANS.items():
        space = ba.SearchSpace.from_model(
            model, formats, tie="auto", example_input=calib.batches[0]
        )
        table = ba.estimate(model, space, calib, args.estimator, cache_dir=cache_dir())
        sol = ba.solve(table, ba.Budget.avg_bits(args.bits), "ilp")
        fqns = {u.fqn for u in sol.space.units}
        rtn, packed = copy.deepcopy(model), copy.deepcopy(model)
        ba.apply(rtn, sol, "rtn")
        before, whole_before = weight_bytes(packed, fqns), model_bytes(packed)
        ba.apply(packed, sol, "packed")
        after, whole_after = weight_bytes(packed, fqns), model_bytes(packed)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_packed(packed, sol, Path(tmp) / "plan.safetensors")
            stored, file_size = checkpoint_nbytes(path), path.stat().st_size
        t0 = time.perf_counter()  # one pass: rtn is the reference, packed the candidate
        scores = evaluate_lm(rtn, {"packed": packed}, heldout)
        t_eval = time.perf_counter() - t0
        s_rtn, s_packed = scores["reference"], scores["packed"]
        hist = " ".join(f"{k}:{int(h['units'])}" for k, h in sol.histogram().items())
        print(
            f"| {label} ({sol.avg_bits:.3f} bits) | {hist} | {before:,} | {after:,} | "
            f"{sol.nbytes:,} | {stored:,} | {file_size:,} | {whole_before:,} -> "
            f"{whole_after:,} | {s_rtn.ppl:.3f} | {s_packed.ppl:.3f} | "
            f"{s_packed.kl:.2e} | {t_eval:.0f} |"
        )
        assert after == sol.nbytes == stored, "measured bytes differ from the prediction"


if __name__ == "__main__":
    main()
