"""Held-out quality of uniform RTN vs mixed-precision plans on SmolLM2-135M.

Prints a markdown table: effective avg bits (every overhead counted), Wikipedia held-out
perplexity and KL to the float model, the same on Lee news, the table's predicted loss, and
wall times. Mixed plans are solved at fixed average bits and at exactly the bytes of the
uniform int3/int4 plans (the apples-to-apples comparison).

    python benchmarks/quality.py [--windows 16] [--lee-windows 8] [--n-samples 32]
                                 [--estimators fisher,layer_error,weight_error] [--solver ilp]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import bitalloc as ba
from bitalloc.data import calibration, evaluate_lm, windows
from bitalloc.models import cache_dir, load

UNIFORM = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")
BUDGETS = (2.5, 3.0, 3.5, 4.0)
MATCHED = ("int3-g64", "int4-g64")  # mixed plans at exactly these uniform formats' bytes


def make_plans(model, calib, estimators, solver):  # noqa: ANN001, ANN201 - script helper
    space = ba.SearchSpace.from_model(model, UNIFORM, tie="auto", example_input=calib.batches[0])
    plans, times = {}, {}
    for est in estimators:
        t0 = time.perf_counter()
        table = ba.estimate(model, space, calib, est, cache_dir=cache_dir())
        times[f"{est} table"] = table.meta.get("estimate_time_s", time.perf_counter() - t0)
        if not plans:
            for fmt in UNIFORM:
                plans[f"uniform {fmt}"] = ba.solve(table, 16.0, "uniform", format=fmt)
        budgets = [(f"{b:g} bits", ba.Budget.avg_bits(b)) for b in BUDGETS]
        budgets += [
            (f"= {f} bytes", ba.Budget.bytes(plans[f"uniform {f}"].nbytes)) for f in MATCHED
        ]
        for label, budget in budgets:
            t0 = time.perf_counter()
            plans[f"{est} + {solver} @ {label}"] = ba.solve(table, budget, solver)
            times[f"{est} {label} solve"] = time.perf_counter() - t0
    return plans, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=16, help="held-out Wikipedia windows")
    ap.add_argument("--lee-windows", type=int, default=8, help="held-out Lee news windows")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--n-samples", type=int, default=32, help="calibration windows")
    ap.add_argument("--estimators", default="fisher,layer_error,weight_error")
    ap.add_argument("--solver", default="ilp")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model, tok = load("smollm2-135m")
    t_load = time.perf_counter() - t0
    calib = calibration(tok, args.n_samples, args.seq_len)
    plans, times = make_plans(model, calib, args.estimators.split(","), args.solver)
    models = {}
    for name, sol in plans.items():
        models[name] = copy.deepcopy(model)
        ba.apply(models[name], sol, "rtn")
    t0 = time.perf_counter()
    wiki = evaluate_lm(
        model, models, windows(tok, "wikipedia-heldout", args.seq_len, args.windows)
    )
    lee = evaluate_lm(model, models, windows(tok, "lee", args.seq_len, args.lee_windows))
    t_eval = time.perf_counter() - t0

    print(
        f"SmolLM2-135M-Instruct (float copy of the Q4_1 GGUF), CPU, {torch.get_num_threads()} "
        f"threads. Calibration {args.n_samples} x {args.seq_len} tokens of wikipedia-calib; "
        f"held-out {args.windows} x {args.seq_len} wikipedia-heldout, {args.lee_windows} x "
        f"{args.seq_len} lee. Backend rtn.\n"
    )
    print("| plan | avg bits | wiki ppl | wiki KL | lee ppl | lee KL | formats (units) |")
    print("|---|---|---|---|---|---|---|")
    ref_w, ref_l = wiki["reference"].ppl, lee["reference"].ppl
    print(f"| float32 reference | 32 | {ref_w:.2f} | 0 | {ref_l:.2f} | 0 | |")
    for name, sol in plans.items():
        w, e = wiki[name], lee[name]
        hist = " ".join(f"{k}:{int(h['units'])}" for k, h in sol.histogram().items())
        print(
            f"| {name} | {sol.avg_bits:.3f} | {w.ppl:.2f} | {w.kl:.4f} | {e.ppl:.2f} | "
            f"{e.kl:.4f} | {hist} |"
        )
    print(
        f"\nwall: model load {t_load:.1f} s, evaluation {t_eval:.0f} s; "
        + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
    )


if __name__ == "__main__":
    main()
