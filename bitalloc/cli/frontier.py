"""``bitalloc frontier``: plans over a range of budgets (JSON, CSV, Pareto PNG)."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from ._common import (
    DEFAULT_ESTIMATOR,
    DEFAULT_FORMATS,
    ESTIMATOR_HELP,
    CliError,
    add_options_flag,
    check_name,
    check_output_dir,
    estimate_table,
    key_values,
    load_model,
    progress,
    read_text,
)


def parse_budgets(text: str) -> list[float]:
    """``start:stop:step`` (stop included) and comma lists of numbers or ranges, in avg bits."""
    out: list[float] = []
    for part in text.split(","):
        try:
            nums = [float(x) for x in part.split(":")]
        except ValueError:
            nums = []
        if not all(math.isfinite(x) for x in nums):
            raise CliError(f"--budgets must be finite numbers, got {part!r}")
        if len(nums) == 3 and nums[2] > 0 and nums[0] <= nums[1]:
            n = int(math.floor((nums[1] - nums[0]) / nums[2] + 1e-9))
            if n > 1000:
                raise CliError(f"--budgets range {part!r} has more than 1000 points")
            out += [round(nums[0] + i * nums[2], 9) for i in range(n + 1)]
        elif len(nums) == 1:
            out += nums
        else:
            raise CliError(
                f"--budgets: cannot parse {part!r}; use numbers and start:stop:step ranges "
                "(step > 0, start <= stop), comma-separated, e.g. 2.5:4.5:0.25 or 3,3.5,4"
            )
    if not all(math.isfinite(b) and b > 0 for b in out):
        raise CliError(f"--budgets must be positive average bits, got {text!r}")
    return sorted(set(out))


def _heldout_scores(
    model: Any, tok: Any, front: Any, subset: Any, args: argparse.Namespace
) -> Any:
    """``front`` with the KL to the reference and the perplexity of every distinct feasible
    plan of ``subset`` (RTN, held-out Wikipedia or ``--text`` windows), four plans per
    reference pass."""
    import copy

    from ..data import evaluate_lm, windows
    from ..search.api import apply

    source = "wikipedia-heldout"
    if args.text:
        source = read_text(args.text, "--text")
    win = windows(tok, source, args.eval_seq_len, args.windows)
    plans = list({p.choice: p for p in subset.points if p.success}.values())
    scores: dict[tuple[str, ...], dict[str, float]] = {}
    bar = progress("evaluate", args.quiet)
    for first in range(0, len(plans), 4):
        chunk = {str(i): plans[first + i] for i in range(min(4, len(plans) - first))}
        copies = {k: copy.deepcopy(model) for k in chunk}
        for k, plan in chunk.items():
            apply(copies[k], plan, "rtn")  # the copy is discarded: no restore needed
        res = evaluate_lm(model, copies, win)
        del copies
        for k, plan in chunk.items():
            scores[plan.choice] = {"kl": res[k].kl, "ppl": res[k].ppl}
        if bar is not None:
            bar(len(scores), len(plans), "evaluate")
    return front.evaluate(lambda p: scores.get(p.choice, {}))


def cmd_frontier(args: argparse.Namespace) -> int:
    import dataclasses

    from ..data import calibration
    from ..search._io import atomic_write_folder
    from ..search.api import frontier
    from ..search.budget import Budget
    from ..search.formats import parse_formats
    from ..search.space import SearchSpace
    from ..solvers import SOLVERS

    budgets = parse_budgets(args.budgets)
    check_output_dir(args.out, "--out")
    formats = parse_formats(args.formats)
    check_name("estimator", args.estimator)
    check_name("solver", args.solver)
    opts = key_values(args.option or ())
    if "seed" in {f.name for f in dataclasses.fields(SOLVERS.cls(args.solver))}:
        opts.setdefault("seed", args.seed)
    impl = SOLVERS.get(args.solver, **opts)
    lengths = [("--seq-len", args.seq_len), ("--eval-seq-len", args.eval_seq_len)]
    model, tok = load_model(args.model, lengths)
    calib = calibration(tok, args.n_samples, args.seq_len, seed=args.seed)
    space = SearchSpace.from_model(model, formats, tie="auto", example_input=calib.batches[0])
    table = estimate_table(model, space, calib, args)
    started = time.perf_counter()
    native = hasattr(impl, "frontier")  # a Pareto search: one run up to the largest budget
    if native:
        front = impl.frontier(table, Budget.avg_bits(max(budgets)))
    else:
        front = frontier(table, budgets, impl)
    solve_s = time.perf_counter() - started
    shown = front.at(budgets) if native else front  # a dense set is read at the budgets
    if args.evaluate:
        front = _heldout_scores(model, tok, front, shown, args)
        shown = front.at(budgets) if native else front
    frame = front.to_frame()
    out = Path(args.out)
    by = "kl" if "kl" in front.metrics() else "predicted"
    title = f"{args.model}: {table.estimator}, {args.solver}"
    atomic_write_folder(  # the three files as one set: a kill never mixes old and new
        out,
        {
            "frontier.json": front.save,
            "frontier.csv": lambda p: p.write_text(frame.to_csv(index=False)),
            "frontier.png": lambda p: front.plot(p, by=by, title=title),
        },
    )
    cols = ["avg_bits", "predicted_loss", *front.metrics(), "status"]
    rows = shown.to_frame()
    if native:  # the requested budgets next to the best Pareto point within each
        rows["budget"] = [b for b in budgets if any(p.avg_bits <= b for p in front.points)]
    print(rows.to_string(index=False, columns=["budget", *cols], float_format="{:.5g}".format))
    print(f"{len(front)} points solved in {solve_s:.1f} s; written to {out}/frontier.*")
    return 0


def register(sub: Any) -> None:
    """Add this module's commands to ``bitalloc``'s subparsers."""
    fr = sub.add_parser("frontier", help="plans over a range of budgets: JSON, CSV and Pareto PNG")
    fr.add_argument("--model", required=True, help="built-in name or local model folder")
    fr.add_argument(
        "--budgets", required=True, help="avg bits: start:stop:step (inclusive) and/or a,b,c"
    )
    fr.add_argument("--solver", default="ilp", help="nsga2: one Pareto run up to the largest")
    add_options_flag(fr, "solver option, e.g. n_gen=100 (repeatable)")
    fr.add_argument("--estimator", default=DEFAULT_ESTIMATOR, help=ESTIMATOR_HELP)
    fr.add_argument("--formats", default=DEFAULT_FORMATS)
    fr.add_argument("--n-samples", type=int, default=32, help="calibration windows")
    fr.add_argument("--seq-len", type=int, default=512, help="calibration window length")
    fr.add_argument("--seed", type=int, default=0)
    fr.add_argument("--no-cache", action="store_true", help="recompute the sensitivity table")
    fr.add_argument(
        "--evaluate", action="store_true", help="measure KL and perplexity of every point (RTN)"
    )
    fr.add_argument("--windows", type=int, default=8, help="held-out windows for --evaluate")
    fr.add_argument("--eval-seq-len", type=int, default=256, help="held-out window length")
    fr.add_argument("--text", help="--evaluate on this text file instead of held-out Wikipedia")
    fr.add_argument("--out", required=True, help="folder for frontier.json/.csv/.png")
    fr.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    fr.set_defaults(func=cmd_frontier)
