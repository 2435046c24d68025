"""EvoPress on SmolLM2-135M: measured-KL search from the ILP plan, on a CPU-scaled schedule.

The fisher table's ILP plan at the budget is the start; EvoPress (level-switch mutation,
multi-step selection, fitness = KL to the float model on the first calibration tokens) refines
it. Prints a markdown table: KL on all calibration tokens, held-out Wikipedia perplexity and
KL (``bitalloc.evaluate.evaluate_plan``) of the start and the result, and wall times.

    python benchmarks/evopress.py [--bits 3.0] [--generations 16] [--offspring 8]
        [--selection 2:512,1:2048] [--n-samples 16] [--seq-len 256] [--windows 8]

``run_evopress`` is importable (benchmarks/solvers.py may reuse it).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import bitalloc as ba
from bitalloc.backends.kl_evaluator import KLEvaluator
from bitalloc.evaluate import evaluate_plan
from bitalloc.solvers import EvoPressSolver

FORMATS = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")


def parse_selection(text: str) -> tuple[tuple[int, int | None], ...]:
    """``"2:512,1:2048"`` -> ``((2, 512), (1, 2048))`` (``all`` = every token)."""
    steps = []
    for part in text.split(","):
        keep, tokens = part.split(":")
        steps.append((int(keep), None if tokens == "all" else int(tokens)))
    return tuple(steps)


def run_evopress(
    model: Any,
    calib: Any,
    table: Any,
    budget: ba.Budget,
    solver: EvoPressSolver,
) -> tuple[Any, Any, dict[str, float]]:
    """``(start plan, EvoPress plan, figures)``: KL of both on all calibration tokens, the
    search's wall time and number of evaluations."""
    kl = KLEvaluator(model, calib, table.space)
    with kl:
        start = ba.solve(table, budget, solver.start)
        t0 = time.perf_counter()
        plan = ba.solve(table, budget, solver, evaluate=kl)
        search_s = time.perf_counter() - t0
        figures = {
            "start_kl": kl(start),
            "evopress_kl": kl(plan),
            "search_s": search_s,
            "evaluations": float(plan.meta["evaluations"]),
        }
    return start, plan, figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=float, default=3.0)
    ap.add_argument("--generations", type=int, default=16)
    ap.add_argument("--offspring", type=int, default=8)
    ap.add_argument("--selection", default="2:512,1:2048", help="survivors:tokens steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-samples", type=int, default=16, help="calibration windows")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--windows", type=int, default=8, help="held-out windows")
    ap.add_argument("--checkpoint", help="resumable EvoPress state file")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model, tok = ba.models.load("smollm2-135m")
    calib = ba.data.calibration(tok, args.n_samples, args.seq_len)
    space = ba.SearchSpace.from_model(model, FORMATS, example_input=calib.batches[0])
    table = ba.estimate(model, space, calib, "fisher", cache_dir=ba.models.cache_dir())
    setup_s = time.perf_counter() - t0
    solver = EvoPressSolver(
        generations=args.generations,
        offspring=args.offspring,
        selection=parse_selection(args.selection),
        seed=args.seed,
        start="ilp",
        checkpoint=args.checkpoint,
    )
    budget = ba.Budget.avg_bits(args.bits)
    start, plan, fig = run_evopress(model, calib, table, budget, solver)
    t1 = time.perf_counter()
    held = {
        name: evaluate_plan(model, tok, p, n_windows=args.windows, seq_len=args.seq_len)
        for name, p in (("ilp (fisher)", start), ("evopress", plan))
    }
    eval_s = time.perf_counter() - t1

    print(
        f"SmolLM2-135M, {len(space)} units, budget {args.bits} avg bits, formats "
        f"{','.join(FORMATS)}; calibration {args.n_samples} x {args.seq_len} tokens; "
        f"EvoPress {args.generations} generations x {args.offspring} offspring, selection "
        f"{args.selection}, seed {args.seed}\n"
    )
    ref = held["evopress"]["reference"]
    print(f"float reference held-out ppl {ref['ppl']:.3f}\n")
    print("| plan | avg bits | calib KL | held-out ppl | held-out KL |")
    print("| --- | --- | --- | --- | --- |")
    for name, p, key in (("ilp (fisher)", start, "start_kl"), ("evopress", plan, "evopress_kl")):
        h = held[name]["plan"]
        print(f"| {name} | {p.avg_bits:.4f} | {fig[key]:.5f} | {h['ppl']:.3f} | {h['kl']:.5f} |")
    print(
        f"\nsearch {fig['search_s']:.1f} s ({int(fig['evaluations'])} evaluations), "
        f"setup (load + fisher table) {setup_s:.1f} s, held-out evaluation {eval_s:.1f} s; "
        f"fitness history {[round(h, 5) for h in plan.meta['history']]}"
    )


if __name__ == "__main__":
    main()
