"""Plans inside the toolkits that serve them: compressed-tensors, torchao and ModelOpt on CPU.

On SmolLM2-135M, for each budget (the bytes of a uniform recipe over the linear layers:
``int8-pc-sym`` is llm-compressor's W8A16; its W4A16 is int4 g128, which vLLM cannot serve on
SmolLM2's 576-wide rows (576 is not a multiple of 128), so ``int4-g64-sym`` stands in):

1. ``uniform``: the recipe's format everywhere;
2. ``bitalloc``: fisher + ILP on the ``compressed-tensors`` target menu (vLLM Marlin's int4
   g32/g64/g128/per-channel, symmetric or not, and int8 per channel) at exactly the recipe's
   bytes; ``bitalloc-sym``: the same on the symmetric half of the menu;
3. ``nncf_ratio``, ``mlx_threshold``, ``llamacpp_km`` (``--anchors``): the rules on the same
   fisher table at the same bytes, measured as checkpoints only;

every row quantized by the SAME quantizer (``--quantizer``, rtn = the activation-weighted
clip-searched grid, or gptq) from the same calibration. Each plan is then built by the
toolkits' own code and measured on held-out Wikipedia (KL to the float model per token, ppl):

- ``compressed-tensors``: the checkpoint bitalloc writes (packed by compressed-tensors'
  compressor), loaded by ``transformers`` (symmetric) or compressed-tensors' decompressor
  (asymmetric groups; transformers 5.24 cannot load those, see ``ct_checkpoint``); bytes read
  from the file;
- ``torchao``: ``quantize_(FqnToConfig)`` from the export, with bitalloc's codes in torchao's
  tensors, and with torchao's own min-max grid (``torchao-own``);
- ``modelopt``: ``mtq.quantize`` + ``mtq.compress`` from the export (deploy plans only:
  int4 g64/g128 and int8 per channel, symmetric), ModelOpt's own max-calibrated grid;
- ``llm-compressor``: its own ``oneshot`` (``GPTQModifier`` by default) with the exported
  ``config_groups`` as the recipe, in its venv (``make llm-compressor``): for the uniform row
  that is llm-compressor's own uniform recipe;

beside ``bitalloc fake-quant``, the backend's own ``W_hat`` (the gap to it is the export's).

    python benchmarks/toolkits.py [--budgets int4-g64-sym,int4-pc-sym,int8-pc-sym]
        [--quantizer rtn] [--n-samples 16] [--windows 8] [--out runs/toolkits]
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any

from _toolkit_run import ToolkitRun, add_run_args

import bitalloc as ba
from bitalloc.backends import BACKENDS
from bitalloc.backends.export import EXPORTERS
from bitalloc.backends.export import ct_checkpoint as ct
from bitalloc.backends.export import modelopt as mo
from bitalloc.backends.export import torchao as tao
from bitalloc.backends.quantizer import Prepared
from bitalloc.models import cache_dir
from bitalloc.search.solution import Solution, Status
from bitalloc.search.targets import MARLIN_MENU


def uniform(space: Any, key: str) -> Solution:
    return Solution(space=space, choice=(key,) * len(space), status=Status.FEASIBLE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budgets", default="int4-g64-sym,int4-pc-sym,int8-pc-sym")
    p.add_argument("--quantizer", default="rtn", choices=("rtn", "gptq"))
    p.add_argument(
        "--anchors",
        default="nncf_ratio,mlx_threshold,llamacpp_km",
        help="rule solvers on the same table at the same bytes (checkpoint rows only)",
    )
    add_run_args(p, "runs/toolkits")
    p.add_argument(
        "--llm-compressor",
        default="gptq",
        choices=("gptq", "rtn", "off"),
        help="also run llm-compressor's oneshot on every plan (after `make llm-compressor`)",
    )
    args = p.parse_args()
    run = ToolkitRun(args)
    out, results = run.out, run.results
    model, tok, calib = run.model, run.tok, run.calib
    record, kl = run.record, run.kl
    backend = BACKENDS.get(args.quantizer)
    menus = {"bitalloc": MARLIN_MENU, "bitalloc-sym": [k for k in MARLIN_MENU if "sym" in k]}
    tables: dict[str, Any] = {}
    for name, menu in menus.items():
        t0 = time.perf_counter()
        space = ba.SearchSpace.from_model(model, menu, target="compressed-tensors")
        prepared = Prepared(backend, model, space, calib)
        table = ba.estimate(model, space, calib, "fisher", backend=prepared, cache_dir=cache_dir())
        tables[name] = (space, table, time.perf_counter() - t0)
        print(f"table {name}: {tables[name][2]:.0f} s", flush=True)

    for budget in args.budgets.split(","):
        space, table, _ = tables["bitalloc"]
        anchor = uniform(space, budget)
        plans = {"uniform": anchor}
        for name, (_, tb, _) in tables.items():
            plans[name] = ba.solve(tb, ba.Budget.bytes(anchor.nbytes), "ilp")
        rules = [a for a in args.anchors.split(",") if a]
        for rule in rules:
            plans[rule] = ba.solve(table, ba.Budget.bytes(anchor.nbytes), rule)
        for who, plan in plans.items():
            key = f"{who} @ {budget}"
            if key in results:
                continue
            plan.save(out / f"plan-{who}-{budget}.json")
            fake = run.fake_quant(backend, plan)
            row: dict[str, Any] = {
                "predicted_bytes": plan.nbytes,
                "avg_bits": plan.avg_bits,
                "fake_quant": fake,
                "formats": {k: plan.choice.count(k) for k in sorted(set(plan.choice))},
            }
            folder = out / f"ct-{who}-{budget}"
            layers = ct.save_checkpoint(model, plan, folder, quantizer=args.quantizer, calib=calib)
            loaded = ct.load_checkpoint(folder)
            row["compressed-tensors"] = {
                **kl(loaded),
                "loader": "transformers" if ct.groups_symmetric(folder) else "compressed-tensors",
                "stored_bytes": sum(lay.stored for lay in layers),
                "weight_shape_bytes": ct.SHAPE_BYTES * len(layers),
            }
            del loaded
            if who in rules:  # the rules' rows: the checkpoint alone
                record(key, row)
                continue
            for tag, codes in (("torchao", args.quantizer), ("torchao-own", None)):
                built, tl = tao.quantize_model(model, plan, codes=codes, calib=calib)
                row[tag] = {**kl(built), "stored_bytes": sum(lay.stored for lay in tl)}
                del built
            bad = EXPORTERS.get("modelopt").check(plan)
            if bad:
                row["modelopt"] = {"skipped": f"{len(bad)} units break ModelOpt's deploy rules"}
            else:
                built, ml = mo.quantize_model(model, plan, calib=calib)
                row["modelopt"] = {**kl(built), "stored_bytes": sum(lay.stored for lay in ml)}
                del built
            record(key, row)
        if args.llm_compressor != "off":
            for who in [w for w in plans if w not in rules]:
                key = f"{who} @ {budget}"
                if "llm-compressor" in results.get(key, {}):
                    continue
                plan = Solution.load(out / f"plan-{who}-{budget}.json")
                folder = out / f"llmc-{args.llm_compressor}-{who}-{budget}"
                shutil.rmtree(folder, ignore_errors=True)
                t0 = time.perf_counter()
                layers = ct.oneshot_checkpoint(
                    model, plan, calib, tok, folder, modifier=args.llm_compressor
                )
                loaded = ct.load_checkpoint(folder)
                record(
                    key,
                    {
                        "llm-compressor": {
                            **kl(loaded),
                            "modifier": args.llm_compressor,
                            "stored_bytes": sum(lay.stored for lay in layers),
                            "seconds": time.perf_counter() - t0,
                        }
                    },
                )
                del loaded
    print(report(results))


def report(results: dict[str, Any]) -> str:
    lines = [
        "| budget | plan | avg bits | bitalloc fake-quant KL | compressed-tensors KL (loader) "
        "| torchao KL | torchao own grid KL | ModelOpt KL | predicted bytes | "
        "checkpoint bytes (- weight_shape) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        who, _, budget = key.partition(" @ ")
        c = r["compressed-tensors"]

        def cell(tag: str, r: dict[str, Any] = r) -> str:
            got = r.get(tag, {}).get("kl")
            return "—" if got is None else f"{got:.4f}"

        lines.append(
            f"| {budget} | {who} | {r['avg_bits']:.3f} | {r['fake_quant']['kl']:.4f} | "
            f"{c['kl']:.4f} ({c['loader']}) | {cell('torchao')} | {cell('torchao-own')} | "
            f"{cell('modelopt')} | {r['predicted_bytes']:,} | "
            f"{c['stored_bytes'] - c['weight_shape_bytes']:,} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
