"""bitalloc's plans inside GPTQModel against its uniform recipe (SmolLM2-135M, CPU).

The menu is what GPTQModel's Marlin path serves with groups, symmetric int4 and int8 at
g32/g64/g128 (per-channel is left out: see RESULTS), with q/k/v and gate/up tied. bitalloc
prices it with its ``gptq`` backend (GPTQ, act_order, on the float model's Hessians), solves
fisher + ILP at exactly the bytes of the uniform recipe (``--budgets``), and GPTQModel builds
both plans from the exported ``dynamic`` config in its venv (``make gptqmodel``) twice: with its
own GPTQ (``gptqmodel``) and with bitalloc's GPTQ codes, which GPTQModel packs, saves and loads
(``codes``). Each checkpoint is measured on held-out Wikipedia through GPTQModel's dequantized
weights (KL to the float model per token, ppl); the logit SQNR of those weights against
GPTQModel's own CPU forward on a probe batch says how far that stand-in is from the kernel.
``bitalloc fake-quant`` is the same plan through bitalloc's GPTQ.

    python benchmarks/gptqmodel_plans.py [--budgets int4-g64-sym] [--out runs/gptqmodel]
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any

import torch
from _toolkit_run import ToolkitRun, add_run_args

import bitalloc as ba
from bitalloc.backends import BACKENDS
from bitalloc.backends.export import gptqmodel as gm
from bitalloc.backends.quantizer import Prepared
from bitalloc.models import cache_dir
from bitalloc.search.solution import Solution, Status
from bitalloc.search.targets import MARLIN_MENU

MENU = tuple(k for k in MARLIN_MENU if k.endswith("-sym") and "-pc" not in k)
# how GPTQModel builds each plan: its own GPTQ, or the codes of bitalloc's (the pricing backend)
BUILDS = {"gptqmodel": False, "codes": True}


def measured(run: ToolkitRun, built: gm.GptqModelRun, seconds: float) -> dict[str, Any]:
    """Held-out KL through GPTQModel's dequantized weights, the logit SQNR of those weights
    against GPTQModel's own forward, and the bytes of its checkpoint's quantized layers."""
    with torch.no_grad():
        ours = built.model(built.probe_ids).logits.float()
    theirs = built.logits.float()
    sqnr = float(10 * torch.log10(theirs.square().sum() / (theirs - ours).square().sum()))
    return {
        **run.kl(built.model),
        "seconds": seconds,
        "forward_sqnr_db": sqnr,
        "bytes": sum(lay.stored for lay in built.layers),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budgets", default="int4-g64-sym")
    add_run_args(p, "runs/gptqmodel")
    args = p.parse_args()
    run = ToolkitRun(args)
    model, calib = run.model, run.calib
    backend = BACKENDS.get("gptq")
    t0 = time.perf_counter()
    space = ba.SearchSpace.from_model(model, MENU, target="compressed-tensors")
    prepared = Prepared(backend, model, space, calib)
    table = ba.estimate(model, space, calib, "fisher", backend=prepared, cache_dir=cache_dir())
    print(f"table: {time.perf_counter() - t0:.0f} s", flush=True)

    for budget in args.budgets.split(","):
        uniform = Solution(space=space, choice=(budget,) * len(space), status=Status.FEASIBLE)
        plans = {"GPTQModel uniform": uniform}
        plans["bitalloc"] = ba.solve(table, ba.Budget.bytes(uniform.nbytes), "ilp")
        for who, plan in plans.items():
            key = f"{who} @ {budget}"
            plan.save(run.out / f"plan-{who.replace(' ', '-')}-{budget}.json")
            row: dict[str, Any] = run.results.get(key, {})
            if "fake_quant" not in row:
                row = {
                    "fake_quant": run.fake_quant(backend, plan),
                    "predicted_bytes": plan.nbytes,
                    "avg_bits": plan.avg_bits,
                    "formats": {k: plan.choice.count(k) for k in sorted(set(plan.choice))},
                }
                run.record(key, row)
            for build, codes in BUILDS.items():
                if build in run.results[key]:
                    continue
                folder = run.out / f"ckpt-{who.replace(' ', '-')}-{budget}-{build}"
                shutil.rmtree(folder, ignore_errors=True)
                given = backend if codes else None
                t1 = time.perf_counter()
                built = gm.quantize_model(model, plan, calib, run.tok, folder, codes=given)
                seconds = time.perf_counter() - t1
                run.record(key, {build: measured(run, built, seconds)})
    print(report(run.results))


def report(results: dict[str, Any]) -> str:
    lines = [
        "| budget | plan | GPTQModel's GPTQ: KL (ppl) | bitalloc's codes in GPTQModel: KL (ppl) "
        "| bitalloc fake-quant KL | forward vs dequantized (dB) | plan bytes | GPTQModel bytes "
        "| formats |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        who, _, budget = key.partition(" @ ")
        own, codes = r.get("gptqmodel"), r.get("codes")
        cells = [f"{m['kl']:.4f} ({m['ppl']:.2f})" if m else "-" for m in (own, codes)]
        db = "/".join(f"{m['forward_sqnr_db']:.1f}" for m in (own, codes) if m)
        stored = sorted({m["bytes"] for m in (own, codes) if m})
        fmts = ", ".join(f"{k} {v}" for k, v in r["formats"].items())
        lines.append(
            f"| {budget} | {who} | {cells[0]} | {cells[1]} | {r['fake_quant']['kl']:.4f} | {db} | "
            f"{r['predicted_bytes']:,} | {', '.join(f'{b:,}' for b in stored)} | {fmts} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
