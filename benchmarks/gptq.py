"""RTN vs GPTQ on the same plans (SmolLM2-135M): held-out perplexity, KL and apply wall time.

Plans: uniform int3-g64, and a fisher + ILP plan at 3.0 average bits over
{int2,int3,int4,int8}-g64 (the fisher table is cached in ``ba.models.cache_dir()``). Each plan
is applied with ``rtn`` and with ``gptq`` (and ``gptq`` with ``act_order``), then scored on
held-out Wikipedia windows. Prints a markdown table.

    python benchmarks/gptq.py [--n-samples 32] [--gptq-batches 16] [--windows 8] [--seq-len 512]
                              [--percdamp 0.01] [--no-act-order]
    python benchmarks/gptq.py --layer-study   # per-layer held-out error vs tokens and damping
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import bitalloc as ba
from bitalloc.data import calibration, evaluate_lm, windows
from bitalloc.models import cache_dir, load

FORMATS = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")
BACKENDS = {  # label -> (backend, options)
    "rtn": ("rtn", {}),
    "gptq": ("gptq", {}),
    "gptq act_order": ("gptq", {"act_order": True}),
}


def make_plans(model, calib):  # noqa: ANN001, ANN201 - script helper
    space = ba.SearchSpace.from_model(model, FORMATS, tie="auto", example_input=calib.batches[0])
    t0 = time.perf_counter()
    table = ba.estimate(model, space, calib, "fisher", cache_dir=cache_dir())
    t_table = time.perf_counter() - t0
    plans = {
        "uniform int3-g64": ba.solve(table, 16.0, "uniform", format="int3-g64"),
        "fisher + ilp @ 3.0 bits": ba.solve(table, ba.Budget.avg_bits(3.0), "ilp"),
    }
    return plans, t_table


def layer_study(model, tok, seq_len: int) -> None:  # noqa: ANN001 - script helper
    """Held-out output error of GPTQ / RTN (int3-g64) per layer vs calibration tokens and damping.

    Inputs of a few layers from 20 windows of the float model: the first 4/8/16 windows build
    ``H``, the last 4 measure ``||(W - W_hat) X||^2``.
    """
    from bitalloc.backends._gptq_core import gptq_quantize, hessian_factor
    from bitalloc.kernels import fake_quantize

    names = [
        "model.layers.3.mlp.down_proj",
        "model.layers.20.mlp.down_proj",
        "model.layers.3.self_attn.o_proj",
        "model.layers.10.mlp.up_proj",
    ]
    xs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, a, n=n: xs[n].append(a[0].detach().reshape(-1, a[0].shape[-1]))
        )
        for n in names
    ]
    with torch.no_grad():
        for batch in calibration(tok, 20, seq_len).batches:
            model(input_ids=batch)
    for h in hooks:
        h.remove()
    damps = (0.01, 0.1, 0.3, 1.0)
    print("| layer | calib tokens | " + " | ".join(f"percdamp {d}" for d in damps) + " |")
    print("|---|---|" + "---|" * len(damps))
    for name in names:
        x, w = torch.cat(xs[name]), model.get_submodule(name).weight.detach().float()
        held = x[16 * seq_len :]
        rtn = float(((w - fake_quantize(w, 3, 64)) @ held.T).pow(2).sum())
        for n_win in (4, 8, 16):
            xc = x[: n_win * seq_len].double()
            h = 2 * xc.T @ xc / xc.shape[0]
            ratios = []
            for d in damps:
                res = gptq_quantize(w, hessian_factor(h, d, False), 3, 64, False)
                ratios.append(float(((w - res.weight) @ held.T).pow(2).sum()) / rtn)
            print(
                f"| {name} | {n_win * seq_len} | " + " | ".join(f"{r:.3f}" for r in ratios) + " |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, default=32, help="calibration windows (fisher)")
    ap.add_argument("--gptq-batches", type=int, default=16, help="of those, used by gptq")
    ap.add_argument("--windows", type=int, default=8, help="held-out Wikipedia windows")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--percdamp", type=float, default=0.01, help="gptq damping (default 0.01)")
    ap.add_argument("--no-act-order", action="store_true", help="skip the act_order variant")
    ap.add_argument("--layer-study", action="store_true", help="only the per-layer table")
    args = ap.parse_args()

    model, tok = load("smollm2-135m")
    if args.layer_study:
        layer_study(model, tok, args.seq_len)
        return
    calib = calibration(tok, args.n_samples, args.seq_len)
    plans, t_table = make_plans(model, calib)
    backends = {k: v for k, v in BACKENDS.items() if not (args.no_act_order and "act" in k)}
    models, wall = {}, {}
    for plan_name, sol in plans.items():
        for label, (backend, opts) in backends.items():
            name = f"{plan_name} | {label}"
            models[name] = copy.deepcopy(model)
            if backend == "gptq":
                opts = {**opts, "max_batches": args.gptq_batches, "percdamp": args.percdamp}
            t0 = time.perf_counter()
            ba.apply(
                models[name], sol, backend, calib=calib if backend == "gptq" else None, **opts
            )
            wall[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    held = windows(tok, "wikipedia-heldout", args.seq_len, args.windows)
    scores = evaluate_lm(model, models, held)
    t_eval = time.perf_counter() - t0

    print(
        f"SmolLM2-135M-Instruct, CPU, {torch.get_num_threads()} threads. Fisher table from "
        f"{args.n_samples} x {args.seq_len} wikipedia-calib tokens ({t_table:.1f} s, cached "
        f"when 0); gptq uses the first {args.gptq_batches} of those windows, percdamp "
        f"{args.percdamp}. Held-out "
        f"{args.windows} x {args.seq_len} wikipedia-heldout.\n"
    )
    print("| plan | avg bits | backend | wiki ppl | wiki KL | apply wall s |")
    print("|---|---|---|---|---|---|")
    print(f"| float32 reference | 32 | - | {scores['reference'].ppl:.2f} | 0 | - |")
    for name in models:
        plan_name, label = name.split(" | ")
        s = scores[name]
        print(
            f"| {plan_name} | {plans[plan_name].avg_bits:.3f} | {label} | {s.ppl:.2f} | "
            f"{s.kl:.4f} | {wall[name]:.1f} |"
        )
    print(f"\nevaluation {t_eval:.0f} s")


if __name__ == "__main__":
    main()
