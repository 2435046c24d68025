"""bitalloc's default pipeline against the anchor rules at equal bytes, on SmolLM2-135M.

Every row at a budget is built by the SAME quantizer (the default backend: GPTQ on the
activation-weighted grid, ``sequential`` block by block) from the SAME calibration windows and
priced by the SAME fisher table; only the allocation differs. Rows:

- ``bitalloc``: ``bitalloc.search`` defaults (table + exact solve + measured correction +
  EvoPress, effort ``--effort``); its wall time counts the table, as a fresh run would;
- ``bitalloc-pc``: the same pipeline on per-channel units (``--channel-group`` output channels
  per unit, MixLLM-style);
- ``nncf_ratio``, ``mlx_threshold``, ``llamacpp_km``: the anchor rules on the same table;
- ``uniform``: the best single format of the menu within the bytes;
- ``minmax-ilp``: the previous default (fisher + ILP on int2/3/4/8-g64, rtn minmax);
- ``evopress-long``: EvoPress with ``--long-generations`` from the bitalloc plan (an upper
  reference; off with ``--long-generations 0``).

Budgets: average bits, plus ``int3-g64`` / ``int4-g64`` (exactly that uniform format's bytes).
Each plan is applied with its backend and measured on held-out Wikipedia and Lee news (KL to
the float model per token, perplexity). Plans are saved under ``--out`` so ``--eval-only``
re-measures without searching again. Prints a markdown table and writes a Pareto PNG.

    python benchmarks/anchors.py [--budgets 2.75,3.0,int3-g64,3.5,4.0,int4-g64,4.5]
        [--rows bitalloc,bitalloc-pc,nncf_ratio,mlx_threshold,llamacpp_km,uniform,minmax-ilp,
        evopress-long] [--n-samples 16] [--windows 8] [--lee-windows 4] [--out runs/anchors]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

import bitalloc as ba
from bitalloc.backends.quantizer import Prepared
from bitalloc.data import calibration, evaluate_lm, windows
from bitalloc.models import cache_dir, load
from bitalloc.nn.units import unit_weight
from bitalloc.search.oneshot import DEFAULT_FORMATS
from bitalloc.search.pipeline import refine

BUDGETS = "2.75,3.0,int3-g64,3.5,4.0,int4-g64,4.5"
ROWS = "bitalloc,bitalloc-pc,nncf_ratio,mlx_threshold,llamacpp_km,uniform,minmax-ilp,evopress-long"
OLD_FORMATS = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")


class Setup:
    """Model, calibration, spaces, tables and prepared backends, each built once (timed)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model, self.tok = load("smollm2-135m")
        self.calib = calibration(self.tok, args.n_samples, args.seq_len)
        self.times: dict[str, float] = {}
        self._spaces: dict[str, Any] = {}
        self.checked = False  # variants == ba.apply verified once

    def space(self, kind: str) -> tuple[Any, Any, Any]:
        """``(space, prepared backend, table)`` for ``kind`` in default / pc / minmax."""
        if kind in self._spaces:
            return self._spaces[kind]
        t0 = time.perf_counter()
        example = self.calib.batches[0]
        if kind == "minmax":
            space = ba.SearchSpace.from_model(self.model, OLD_FORMATS, example_input=example)
            backend: Any = ba.backends.RtnBackend(grid="minmax")
        else:
            group = self.args.channel_group if kind == "pc" else None
            space = ba.SearchSpace.from_model(
                self.model,
                self.args.formats.split(",") if self.args.formats else DEFAULT_FORMATS,
                tie=None if group else "auto",
                channel_group=group,
                example_input=example,
            )
            backend = ba.backends.GptqBackend()
        prepared = Prepared(backend, self.model, space, self.calib)
        table = ba.estimate(
            self.model, space, self.calib, "fisher", backend=prepared, cache_dir=cache_dir()
        )
        self.times[f"table {kind}"] = time.perf_counter() - t0
        self._spaces[kind] = (space, prepared, table)
        return self._spaces[kind]

    def budget(self, label: str) -> ba.Budget:
        if label.startswith("int"):
            space = self.space("default")[0]
            uni = ba.Solution(space=space, choice=(label,) * len(space), status=ba.Status.FEASIBLE)
            return ba.Budget.bytes(uni.nbytes)
        return ba.Budget.avg_bits(float(label))


def make_plan(setup: Setup, row: str, label: str, plans: dict[str, Any]) -> tuple[Any, float]:
    """One row's plan at one budget and its wall time (seconds)."""
    budget, args = setup.budget(label), setup.args
    t0 = time.perf_counter()
    if row.startswith("bitalloc"):  # bitalloc, bitalloc-pc, bitalloc-fast, bitalloc-max
        kind = "pc" if row == "bitalloc-pc" else "default"
        effort = row.split("-")[1] if row in ("bitalloc-fast", "bitalloc-max") else args.effort
        space, prepared, table = setup.space(kind)
        sol = refine(setup.model, setup.calib, table, budget, backend=prepared, effort=effort)
        return sol, time.perf_counter() - t0 + setup.times[f"table {kind}"]
    if row == "minmax-ilp":
        table = setup.space("minmax")[2]
        sol = ba.solve(table, budget, "ilp")
        return sol, time.perf_counter() - t0 + setup.times["table minmax"]
    space, prepared, table = setup.space("default")
    if row == "uniform":
        best = None
        for fmt in space.formats:
            if all(fmt.key in u.allowed for u in space.units):
                cand = ba.solve(table, ba.Budget.avg_bits(16.0), "uniform", format=fmt.key)
                if budget.residual(cand) >= 0 and (best is None or cand.nbytes > best.nbytes):
                    best = cand
        return best, time.perf_counter() - t0
    if row == "evopress-long":
        start = plans.get("bitalloc")
        if start is None or args.long_generations == 0:
            return None, 0.0
        kl = ba.backends.KLEvaluator(setup.model, setup.calib, space, prepared)
        solver = ba.solvers.EvoPressSolver(
            generations=args.long_generations,
            offspring=16,
            selection=((4, 1024), (1, 4096)),
            start="ilp",
        )
        with kl:  # start from the bitalloc plan: a table whose exact optimum is that plan
            sol = solver.solve(_pin(table, start), budget, evaluate=kl)
        return sol, time.perf_counter() - t0
    return ba.solve(table, budget, row), time.perf_counter() - t0


def _pin(table: Any, plan: Any) -> Any:
    """A copy of ``table`` whose exact optimum under the plan's budget is ``plan``: the plan's
    entries keep their values, every other entry is raised by the table's total (so EvoPress's
    ILP start is the plan; its fitness is the measured KL, the table only seeds the start)."""
    import numpy as np

    values = table.values.copy()
    col = {k: j for j, k in enumerate(table.space.keys)}
    bump = float(np.nansum(np.where(np.isfinite(values), values, 0.0))) + 1.0
    keep = np.zeros_like(values, dtype=bool)
    for i, k in enumerate(plan.choice):
        keep[i, col[k]] = True
    values = np.where(keep | ~np.isfinite(values), values, values + bump)
    return ba.SensitivityTable(space=table.space, values=values, estimator=table.estimator)


def build(setup: Setup, plan: Any) -> Any:
    """A copy of the model with ``plan`` applied.

    GPTQ plans (every row but ``minmax-ilp``) are assembled from the variants the search
    priced and measured: one-pass GPTQ on the float model's Hessians, i.e.
    ``ba.apply(model, plan, backend=GptqBackend(sequential=False))`` bit for bit (the backend
    contract; checked once per run). That is the same quantizer for every row. The library's
    default apply is sequential GPTQ, which measured better still (RESULTS.md), so the figures
    are conservative for every row alike. Other plans go through ``ba.apply``."""
    model = copy.deepcopy(setup.model)
    rec = plan.meta.get("backend") or {}
    kind = next(
        (
            k
            for k, (space, _, _) in setup._spaces.items()
            if k != "minmax"
            and [u.name for u in space.units] == [u.name for u in plan.space.units]
        ),
        None,
    )
    if kind is None or rec.get("name") != "gptq":
        ba.apply(model, plan, calib=setup.calib)
        return model
    space, prepared, _ = setup._spaces[kind]
    weights = prepared.quantized(setup.model, space, setup.calib)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for i, (unit, key) in enumerate(zip(space.units, plan.choice, strict=True)):
            unit_weight(modules[unit.fqn], unit).copy_(weights.get(i, key).weight)
    if not setup.checked:
        ref = copy.deepcopy(setup.model)
        ba.apply(ref, plan, backend=ba.backends.GptqBackend(sequential=False), calib=setup.calib)
        same = all(
            torch.equal(a, b)
            for a, b in zip(ref.state_dict().values(), model.state_dict().values(), strict=True)
        )
        print(f"variants == one-pass ba.apply at {plan.avg_bits:.3f} bits: {same}", flush=True)
        if not same:
            raise SystemExit("the variants differ from ba.apply")
        setup.checked = True
    return model


def measure(setup: Setup, plans: dict[tuple[str, str], Any], done: dict[str, dict]) -> None:
    """Held-out KL/ppl of every plan not in ``done`` (keyed ``row @ budget``), applied with
    its recorded backend (chunks of 4); ``done`` is updated in place."""
    args = setup.args
    wiki = windows(setup.tok, "wikipedia-heldout", args.seq_len, args.windows)
    lee = windows(setup.tok, "lee", args.seq_len, args.lee_windows)
    items = [(k, p) for k, p in plans.items() if p is not None and " @ ".join(k) not in done]
    for start in range(0, len(items), 4):
        chunk = dict(items[start : start + 4])
        models = {" @ ".join(key): build(setup, plan) for key, plan in chunk.items()}
        w = evaluate_lm(setup.model, models, wiki)
        e = evaluate_lm(setup.model, models, lee)
        for name in models:
            done[name] = {
                "wiki_kl": w[name].kl,
                "wiki_ppl": w[name].ppl,
                "lee_kl": e[name].kl,
                "lee_ppl": e[name].ppl,
            }
        done["float @ "] = {"wiki_ppl": w["reference"].ppl, "lee_ppl": e["reference"].ppl}
        del models


def report(plans, times, scores, budgets, rows) -> str:  # noqa: ANN001
    lines = [
        "| budget | row | avg bits | bytes | wiki KL | wiki ppl | lee KL | lee ppl | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in budgets:
        best = min(  # the upper reference (a long EvoPress run) is not a competitor
            (
                scores[(r, label)]["wiki_kl"]
                for r in rows
                if (r, label) in scores and r != "evopress-long"
            ),
            default=None,
        )
        for row in rows:
            plan, s = plans.get((row, label)), scores.get((row, label))
            if plan is None or s is None:
                continue
            mark = " **best**" if s["wiki_kl"] == best else ""
            lines.append(
                f"| {label} | {row}{mark} | {plan.avg_bits:.4f} | {plan.nbytes:,} | "
                f"{s['wiki_kl']:.4f} | {s['wiki_ppl']:.2f} | {s['lee_kl']:.4f} | "
                f"{s['lee_ppl']:.2f} | {times.get((row, label), 0.0):.0f} |"
            )
    return "\n".join(lines)


def pareto_png(plans, scores, rows, path: Path) -> None:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        pts = sorted(
            (plans[k].avg_bits, scores[k]["wiki_kl"])
            for k in plans
            if k[0] == row and plans[k] is not None and k in scores
        )
        if pts:
            ax.plot(*zip(*pts), marker="o", label=row, linewidth=2 if row == "bitalloc" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("average bits per weight (everything stored)")
    ax.set_ylabel("KL to float, held-out Wikipedia (nats/token)")
    ax.set_title("SmolLM2-135M: measured KL vs bits, same quantizer for every rule")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default=BUDGETS)
    ap.add_argument("--rows", default=ROWS)
    ap.add_argument("--n-samples", type=int, default=16, help="calibration windows")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8, help="held-out Wikipedia windows")
    ap.add_argument("--lee-windows", type=int, default=4)
    ap.add_argument("--effort", default="default")
    ap.add_argument(
        "--formats", default="", help="menu of the bitalloc rows (default: the shipped menu)"
    )
    ap.add_argument("--channel-group", type=int, default=64)
    ap.add_argument("--long-generations", type=int, default=100)
    ap.add_argument("--out", default="runs/anchors")
    ap.add_argument("--eval-only", action="store_true", help="re-measure the saved plans")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budgets, rows = args.budgets.split(","), args.rows.split(",")
    setup = Setup(args)
    plans: dict[tuple[str, str], Any] = {}
    times: dict[tuple[str, str], float] = {}
    saved, scored = out / "times.json", out / "scores.json"
    old_times = json.loads(saved.read_text()) if saved.exists() else {}
    done: dict[str, dict] = json.loads(scored.read_text()) if scored.exists() else {}
    for label in budgets:  # plan and measure budget by budget: partial runs keep their rows
        for row in rows:
            path = out / f"{row}@{label}.json"
            if path.exists():
                plans[(row, label)] = ba.Solution.load(path)
                times[(row, label)] = old_times.get(f"{row}@{label}", 0.0)
                continue
            if args.eval_only:
                continue
            here = {r: p for (r, b), p in plans.items() if b == label}
            sol, secs = make_plan(setup, row, label, here)
            plans[(row, label)], times[(row, label)] = sol, secs
            if sol is not None:
                sol.save(path)
            old_times[f"{row}@{label}"] = secs
            saved.write_text(json.dumps(old_times, indent=1))
            print(f"{row} @ {label}: {secs:.0f} s", flush=True)
        measure(setup, {k: p for k, p in plans.items() if k[1] == label}, done)
        scored.write_text(json.dumps(done, indent=1))
    scores = {tuple(k.split(" @ ")): v for k, v in done.items()}
    float_ppl = done["float @ "]
    print(
        f"\nSmolLM2-135M, {torch.get_num_threads()} threads; calibration {args.n_samples} x "
        f"{args.seq_len} wikipedia-calib; held-out {args.windows} x {args.seq_len} Wikipedia "
        f"(float ppl {float_ppl['wiki_ppl']:.2f}), {args.lee_windows} x "
        f"{args.seq_len} Lee (float ppl {float_ppl['lee_ppl']:.2f}); effort "
        f"{args.effort}.\n"
    )
    print(report(plans, times, scores, budgets, rows))
    pareto_png(plans, scores, rows, out / "pareto.png")


if __name__ == "__main__":
    main()
