"""Every registered solver side by side on the same SmolLM2-135M sensitivity table.

For each budget (default 2.5 / 3.0 / 3.5 average bits) and each registered solver (anchor
baselines included; ``brute_force`` is skipped, 10^150 plans): the predicted objective (the
table's summed loss) relative to the ILP optimum, the effective average bits, wall time, and
the held-out Wikipedia perplexity / KL of the plan applied with RTN. Identical plans are
evaluated once. Black-box solvers optimise the predicted loss here (no ``evaluate``), with
CPU-sized schedules; ``benchmarks/evopress.py`` measures EvoPress with the true KL fitness.

    python benchmarks/solvers.py [--budgets 2.5,3.0,3.5] [--windows 8] [--n-samples 32]
                                 [--estimator fisher] [--solvers ilp,lagrangian,...]
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch

import bitalloc as ba
from bitalloc.data import calibration, evaluate_lm, windows
from bitalloc.models import cache_dir, load
from bitalloc.solvers import SOLVERS

FORMATS = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")
SKIP = ("brute_force",)
# CPU-sized schedules for the black-box solvers (their defaults are the documented ones).
OPTIONS: dict[str, dict[str, Any]] = {
    "evopress": {"seed": 0},
    "optuna": {"seed": 0},
    "nsga2": {"seed": 0},
}


def solve_all(
    table: ba.SensitivityTable, budgets: list[float], names: list[str]
) -> list[dict[str, Any]]:
    """Solve every (budget, solver) pair; rows carry the plan, objective and time."""
    rows = []
    for bits in budgets:
        budget = ba.Budget.avg_bits(bits)
        best = ba.solve(table, budget, "ilp")
        for name in names:
            t0 = time.perf_counter()
            sol = ba.solve(table, budget, name, **OPTIONS.get(name, {}))
            wall = time.perf_counter() - t0
            rows.append(
                {
                    "budget": bits,
                    "solver": name,
                    "solution": sol,
                    "wall_s": wall,
                    "ratio": sol.objective / best.objective if sol.choice else float("nan"),
                }
            )
    return rows


def measure(model: Any, tok: Any, rows: list[dict[str, Any]], n_windows: int, seq_len: int):  # noqa: ANN201
    """Held-out perplexity and KL of every distinct feasible plan (one RTN copy each)."""
    plans: dict[tuple[str, ...], str] = {}
    models = {}
    for row in rows:
        sol = row["solution"]
        if not sol.choice:
            continue
        key = plans.setdefault(sol.choice, f"plan{len(plans)}")
        row["key"] = key
        if key not in models:
            models[key] = copy.deepcopy(model)
            ba.apply(models[key], sol, "rtn")
    t0 = time.perf_counter()
    res = evaluate_lm(model, models, windows(tok, "wikipedia-heldout", seq_len, n_windows))
    return res, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="2.5,3.0,3.5")
    ap.add_argument("--windows", type=int, default=8, help="held-out Wikipedia windows")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--n-samples", type=int, default=32, help="calibration windows")
    ap.add_argument("--estimator", default="fisher")
    ap.add_argument("--solvers", default="", help="comma list (default: every registered one)")
    args = ap.parse_args()

    model, tok = load("smollm2-135m")
    calib = calibration(tok, args.n_samples, args.seq_len)
    space = ba.SearchSpace.from_model(model, FORMATS, tie="auto", example_input=calib.batches[0])
    table = ba.estimate(model, space, calib, args.estimator, cache_dir=cache_dir())
    names = (
        args.solvers.split(",") if args.solvers else [n for n in SOLVERS.names() if n not in SKIP]
    )
    budgets = [float(b) for b in args.budgets.split(",")]
    rows = solve_all(table, budgets, names)
    res, t_eval = measure(model, tok, rows, args.windows, args.seq_len)

    print(
        f"SmolLM2-135M, {args.estimator} table ({len(space)} units, tie groups auto), "
        f"{torch.get_num_threads()} threads. Held-out {args.windows} x {args.seq_len} "
        f"wikipedia-heldout, RTN. Float perplexity {res['reference'].ppl:.2f}.\n"
    )
    cols = ("budget", "solver", "status", "avg bits", "predicted / ILP", "wiki ppl", "wiki KL")
    print("| " + " | ".join((*cols, "wall s")) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        sol = r["solution"]
        m = res.get(r.get("key", ""))
        ppl = f"{m.ppl:.2f}" if m else "-"
        kl = f"{m.kl:.4f}" if m else "-"
        bits = f"{sol.avg_bits:.3f}" if sol.choice else "-"
        print(
            f"| {r['budget']:g} | {r['solver']} | {sol.status.value} | {bits} | "
            f"{r['ratio']:.4f} | {ppl} | {kl} | {r['wall_s']:.2f} |"
        )
    print(f"\nevaluation wall {t_eval:.0f} s")


if __name__ == "__main__":
    main()
