"""Every estimator on SmolLM2-135M: rank correlation with measured loss, cost, plan quality.

For each registered estimator (each in its own process, so peak memory is its own):
- Spearman / Kendall rank correlation between predicted loss (sum of table entries) and the
  measured KL to the float model of random feasible plans (``bitalloc validate``);
- wall time, forward and backward passes, and peak RSS of building the table;
- held-out perplexity and KL of the ILP plan at 3.0 avg bits.

    python benchmarks/sensitivity.py [--estimators a,b] [--n-samples 8] [--seq-len 256]
                                     [--n-plans 24] [--windows 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

FORMATS = ["int2-g64", "int3-g64", "int4-g64", "int8-g64"]
BUDGETS = (2.75, 3.25, 3.75)
# Options scaled for a 2-core CPU: kl_probe runs 210 units x 4 formats forward passes per batch;
# hessian_trace costs about 24 s per probe at 256 tokens.
OPTIONS = {"kl_probe": {"max_batches": 1}, "hessian_trace": {"max_probes": 8, "batches": 1}}


def _count_passes(model):  # noqa: ANN001, ANN202 - script helper
    """Count forward calls of ``model`` and autograd backward / grad calls."""
    import torch

    counts = {"forward": 0, "backward": 0}
    model.register_forward_hook(lambda *a: counts.__setitem__("forward", counts["forward"] + 1))
    for mod, attr in ((torch.autograd, "backward"), (torch.autograd, "grad")):
        orig = getattr(mod, attr)

        def wrapped(*a, _orig=orig, **k):  # noqa: ANN002, ANN003, ANN202
            counts["backward"] += 1
            return _orig(*a, **k)

        setattr(mod, attr, wrapped)
    return counts


def run_one(name: str, args: argparse.Namespace) -> dict:
    import bitalloc as ba
    from bitalloc.data import calibration, evaluate_lm, windows
    from bitalloc.models import load
    from bitalloc.validate import validate_estimator

    eager = name in ("hessian_trace",)
    model, tok = load("smollm2-135m", attn_implementation="eager" if eager else None)
    calib = calibration(tok, args.n_samples, args.seq_len)
    space = ba.SearchSpace.from_model(model, FORMATS, tie="auto", example_input=calib.batches[0])
    counts = _count_passes(model)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    table = ba.estimate(model, space, calib, name, **OPTIONS.get(name, {}))
    wall = time.perf_counter() - t0
    passes = dict(counts)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    win = windows(tok, "wikipedia-heldout", args.seq_len, args.windows)
    report = validate_estimator(model, table, win, budgets=BUDGETS, n_plans=args.n_plans)
    plan = ba.solve(table, 3.0, "ilp")
    q = __import__("copy").deepcopy(model)
    ba.apply(q, plan)
    s = evaluate_lm(model, {"plan": q}, windows(tok, "wikipedia-heldout", 512, args.eval_windows))
    return {
        "estimator": name,
        "spearman": report.spearman,
        "kendall": report.kendall,
        "spearman_ppl": report.spearman_ppl,
        "spearman_within": report.spearman_within,
        "time_s": wall,
        "forward": passes["forward"],
        "backward": passes["backward"],
        "peak_rss_gb": peak_gb,
        "rss_before_gb": rss0 / 2**20,
        "ppl_3bit": s["plan"].ppl,
        "kl_3bit": s["plan"].kl,
        "ref_ppl": s["reference"].ppl,
        "options": OPTIONS.get(name, {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--estimators", default="")
    ap.add_argument("--n-samples", type=int, default=8, help="calibration windows")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--n-plans", type=int, default=24)
    ap.add_argument("--windows", type=int, default=4, help="held-out windows per plan")
    ap.add_argument("--eval-windows", type=int, default=8, help="512-token windows, 3-bit plan")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    import bitalloc as ba

    names = args.estimators.split(",") if args.estimators else list(ba.available("estimator"))
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name] + [
            f"--{k.replace('_', '-')}={v}"
            for k, v in vars(args).items()
            if k not in ("one", "estimators")
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"done {name}", file=sys.stderr, flush=True)
    print(
        f"SmolLM2-135M, formats {','.join(FORMATS)}, calibration {args.n_samples} x "
        f"{args.seq_len} tokens; validation: {args.n_plans} random plans at {BUDGETS} avg bits "
        f"measured on {args.windows} x {args.seq_len} held-out tokens; 3-bit ILP plan on "
        f"{args.eval_windows} x 512 held-out tokens (float ppl {rows[0]['ref_ppl']:.2f}).\n"
    )
    print(
        "| estimator | Spearman (KL) | Kendall (KL) | Spearman (ppl) | within-budget Spearman "
        "| time s | fwd | bwd | peak RSS GB | ppl @3.0 | KL @3.0 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        label = f"{r['estimator']} ({opts})" if opts else r["estimator"]
        print(
            f"| {label} | {r['spearman']:+.3f} | {r['kendall']:+.3f} | "
            f"{r['spearman_ppl']:+.3f} | {r['spearman_within']:+.3f} | {r['time_s']:.1f} | "
            f"{r['forward']} | {r['backward']} | "
            f"{r['peak_rss_gb']:.2f} | {r['ppl_3bit']:.1f} | {r['kl_3bit']:.3f} |"
        )


if __name__ == "__main__":
    main()
