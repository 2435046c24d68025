"""``bitalloc validate``: rank correlation of predicted vs measured loss."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import (
    DEFAULT_ESTIMATOR,
    DEFAULT_FORMATS,
    ESTIMATOR_HELP,
    CliError,
    check_name,
    estimate_table,
    load_model,
    progress,
)


def cmd_validate(args: argparse.Namespace) -> int:
    from ..data import calibration, windows
    from ..search.formats import parse_formats
    from ..search.space import SearchSpace
    from ..validate import validate_estimator

    check_name("estimator", args.estimator)
    try:
        budgets = [float(b) for b in args.budgets.split(",")]
    except ValueError:
        raise CliError(
            f"--budgets must be comma-separated numbers, got {args.budgets!r}"
        ) from None
    model, tok = load_model(args.model, [("--seq-len", args.seq_len)])
    calib = calibration(tok, args.n_samples, args.seq_len, seed=args.seed)
    space = SearchSpace.from_model(
        model, parse_formats(args.formats), tie="auto", example_input=calib.batches[0]
    )
    table = estimate_table(model, space, calib, args)
    win = windows(tok, "wikipedia-heldout", args.seq_len, args.windows)
    report = validate_estimator(
        model,
        table,
        win,
        budgets=budgets,
        n_plans=args.n_plans,
        seed=args.seed,
        correct=args.correct,
        callback=progress("plans", args.quiet),
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(
            f"estimator {report.estimator}: {len(report.plans)} random plans at "
            f"{args.budgets} avg bits, measured on {args.windows} x {args.seq_len} held-out "
            "tokens"
        )
        print(
            f"  predicted loss vs measured KL:  Spearman {report.spearman:+.3f}  "
            f"Kendall {report.kendall:+.3f}"
        )
        print(
            f"  predicted loss vs perplexity:   Spearman {report.spearman_ppl:+.3f}  "
            f"Kendall {report.kendall_ppl:+.3f}"
        )
        print(f"  within one budget (mean Spearman vs KL): {report.spearman_within:+.3f}")
        c = report.corrected
        if c is not None:
            print(
                f"  corrected table (fitted to {c.fit_plans} other plans, "
                f"{c.correction.get('kind')}): Spearman {c.spearman:+.3f}  Kendall "
                f"{c.kendall:+.3f}  within one budget {c.spearman_within:+.3f}"
            )
        print(f"  ({report.time_s:.0f} s)")
    return 0


def register(sub: Any) -> None:
    """Add this module's commands to ``bitalloc``'s subparsers."""
    v = sub.add_parser("validate", help="rank correlation of predicted vs measured loss")
    v.add_argument("--model", required=True)
    v.add_argument(
        "--estimator",
        default=DEFAULT_ESTIMATOR,
        help=ESTIMATOR_HELP,
    )
    v.add_argument("--n-plans", type=int, default=32)
    v.add_argument(
        "--correct",
        type=int,
        default=0,
        help="also fit the measured correction to this many other plans (>= 4) and rank "
        "the validation plans by the corrected table",
    )
    v.add_argument("--budgets", default="2.75,3.25,3.75", help="avg bits, comma-separated")
    v.add_argument("--formats", default=DEFAULT_FORMATS)
    v.add_argument("--n-samples", type=int, default=16, help="calibration windows")
    v.add_argument("--seq-len", type=int, default=256, help="calibration and held-out length")
    v.add_argument("--windows", type=int, default=4, help="held-out windows per plan")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--no-cache", action="store_true")
    v.add_argument("--json", action="store_true")
    v.add_argument("-q", "--quiet", action="store_true")
    v.set_defaults(func=cmd_validate)
