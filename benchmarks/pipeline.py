"""The whole pipeline on SmolLM2-135M: search, GPTQ, packed checkpoint, reload, measure.

1. fisher table (cached) + ILP at ``--bits`` average bits;
2. ``save_packed(..., quantizer="gptq")``: GPTQ on the float model, its codes/scales/zeros
   written to a safetensors checkpoint (the float model is left untouched);
3. ``load_packed`` into a fresh copy of the float model (``PackedLinear`` layers);
4. held-out perplexity / KL of: the reloaded packed model, the GPTQ fake-quantized model
   (``apply(..., "gptq")``, must equal the packed one), and RTN on the same plan.

Prints file size, measured vs predicted bytes, perplexities and wall times.

    python benchmarks/pipeline.py [--bits 3.0] [--windows 4] [--n-samples 8] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch

import bitalloc as ba
from bitalloc.backends.packed import checkpoint_nbytes, load_packed, save_packed
from bitalloc.data import calibration, evaluate_lm, windows
from bitalloc.models import cache_dir, load

FORMATS = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=float, default=3.0)
    ap.add_argument("--windows", type=int, default=4, help="held-out Wikipedia windows")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--n-samples", type=int, default=8, help="calibration windows (GPTQ too)")
    args = ap.parse_args()

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tok = load("smollm2-135m")
    calib = calibration(tok, args.n_samples, args.seq_len)
    space = ba.SearchSpace.from_model(model, FORMATS, tie="auto", example_input=calib.batches[0])
    table = ba.estimate(model, space, calib, "fisher", cache_dir=cache_dir())
    sol = ba.solve(table, ba.Budget.avg_bits(args.bits), "ilp")
    times["load + table + solve"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "smollm2-packed.safetensors"
        t0 = time.perf_counter()
        save_packed(model, sol, path, quantizer="gptq", calib=calib)
        times["gptq + pack + save"] = time.perf_counter() - t0
        file_bytes = os.path.getsize(path)
        measured = checkpoint_nbytes(path)
        packed = copy.deepcopy(model)
        t0 = time.perf_counter()
        load_packed(packed, path)
        times["load_packed"] = time.perf_counter() - t0

    fake, rtn = copy.deepcopy(model), copy.deepcopy(model)
    t0 = time.perf_counter()
    ba.apply(fake, sol, "gptq", calib=calib)
    times["gptq apply (fake-quant)"] = time.perf_counter() - t0
    ba.apply(rtn, sol, "rtn")
    t0 = time.perf_counter()
    win = windows(tok, "wikipedia-heldout", args.seq_len, args.windows)
    res = evaluate_lm(model, {"packed (gptq)": packed, "gptq fake-quant": fake, "rtn": rtn}, win)
    times["evaluation"] = time.perf_counter() - t0

    print(
        f"SmolLM2-135M, fisher + ILP @ {args.bits:g} bits ({sol.avg_bits:.4f} effective), "
        f"{args.n_samples} x {args.seq_len} calibration tokens, {args.windows} x {args.seq_len} "
        f"held-out Wikipedia tokens, {torch.get_num_threads()} threads.\n"
    )
    same = "equal" if measured == sol.nbytes else "DIFFER"
    print(
        f"checkpoint file {file_bytes:,} B; weight tensors measured {measured:,} B, "
        f"plan predicted {sol.nbytes:,} B ({same})"
    )
    print("\n| model | ppl | KL to float |\n|---|---|---|")
    print(f"| float32 reference | {res['reference'].ppl:.2f} | 0 |")
    for name in ("packed (gptq)", "gptq fake-quant", "rtn"):
        print(f"| {name} | {res[name].ppl:.2f} | {res[name].kl:.4f} |")
    print("\nwall: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))


if __name__ == "__main__":
    main()
