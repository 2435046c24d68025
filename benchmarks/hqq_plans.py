"""bitalloc's per-tag plans inside HQQ's own engine against HQQ's uniform recipes (SmolLM2-135M).

HQQ keys a format by the layer's tag (``self_attn.q_proj``, ``mlp.down_proj``), so a plan for it
gives every block the same format per tag: bitalloc searches with one tie group per tag
(``tie=r"re:model\\.layers\\.\\d+\\.(.*)"``) on HQQ's grids (asymmetric, group 64: 2, 3, 4 and
8 bits), fisher + ILP at exactly the bytes of HQQ's uniform recipe (``--budgets``), priced by
``--quantizer``: ``hqq`` (default; the ``hqq`` backend, HQQ's own quantizer, so bitalloc's
fake-quant is bit for bit HQQ's engine) or ``rtn`` (bitalloc's clip-searched grid). Both plans
are then quantized by HQQ itself (``hqq.quantize_model``: ``AutoHQQHFModel`` with the exported
per-tag table, HQQ's half-quadratic optimizer fits its scales and zeros) and measured on
held-out Wikipedia (KL to the float model per token, ppl); bytes are read from HQQ's tensors.
``bitalloc fake-quant`` is the same plan through the pricing backend. ``--effort fast``
adds ``bitalloc-fast``: the default pipeline's measured stages (correction, then the best
measured plan on the calibration tokens) on the same table.

    python benchmarks/hqq_plans.py [--budgets int4-g64,int3-g64] [--quantizer hqq|rtn]
        [--effort fast] [--out runs/hqq]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _toolkit_run import ToolkitRun, add_run_args

import bitalloc as ba
from bitalloc.backends import BACKENDS
from bitalloc.backends.export import EXPORTERS, hqq
from bitalloc.backends.quantizer import Prepared
from bitalloc.models import cache_dir
from bitalloc.search.pipeline import refine
from bitalloc.search.solution import Solution, Status

MENU = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")
TAGS = r"re:model\.layers\.\d+\.(.*)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budgets", default="int4-g64,int3-g64")
    p.add_argument("--quantizer", default="hqq", choices=("hqq", "rtn"))
    p.add_argument("--effort", default="", help="also the default pipeline: fast|default")
    add_run_args(p, "runs/hqq")
    args = p.parse_args()
    run = ToolkitRun(args)
    model, calib = run.model, run.calib
    backend = BACKENDS.get(args.quantizer)
    t0 = time.perf_counter()
    space = ba.SearchSpace.from_model(model, MENU, tie=[TAGS])
    prepared = Prepared(backend, model, space, calib)
    table = ba.estimate(model, space, calib, "fisher", backend=prepared, cache_dir=cache_dir())
    print(f"table: {time.perf_counter() - t0:.0f} s, {len(space.tie_groups())} tags", flush=True)

    exporter = EXPORTERS.get("hqq")
    for budget in args.budgets.split(","):
        uniform = Solution(space=space, choice=(budget,) * len(space), status=Status.FEASIBLE)
        plans = {"HQQ uniform": uniform}
        plans["bitalloc"] = ba.solve(table, ba.Budget.bytes(uniform.nbytes), "ilp")
        if args.effort and f"bitalloc-{args.effort} @ {budget}" not in run.results:
            plans[f"bitalloc-{args.effort}"] = refine(
                model, calib, table, ba.Budget.bytes(uniform.nbytes), backend=prepared,
                effort=args.effort,
            )  # fmt: skip
        for who, plan in plans.items():
            key = f"{who} @ {budget}"
            if key in run.results:
                continue
            assert exporter.check(plan) == [], key
            plan.save(run.out / f"plan-{who.replace(' ', '-')}-{budget}.json")
            fake = run.fake_quant(backend, plan)
            t1 = time.perf_counter()
            built, layers = hqq.quantize_model(model, plan)
            row = {
                "hqq": {**run.kl(built), "seconds": time.perf_counter() - t1},
                "fake_quant": fake,
                "predicted_bytes": plan.nbytes,
                "hqq_bytes": sum(lay.stored for lay in layers),
                "avg_bits": plan.avg_bits,
                "formats": exporter.render(plan)["dynamic_config"],
                "quantizer": args.quantizer,
            }
            del built
            run.record(key, row)
    print(report(run.results))


def report(results: dict[str, Any]) -> str:
    lines = [
        "| budget | plan | HQQ KL (ppl) | bitalloc fake-quant KL | plan bytes | HQQ bytes |"
        " per-tag bits |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        who, _, budget = key.partition(" @ ")
        bits = ", ".join(f"{t.split('.')[-1]} {v['nbits']}" for t, v in r["formats"].items())
        lines.append(
            f"| {budget} | {who} | {r['hqq']['kl']:.4f} ({r['hqq']['ppl']:.2f}) | "
            f"{r['fake_quant']['kl']:.4f} | {r['predicted_bytes']:,} | {r['hqq_bytes']:,} | "
            f"{bits} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
