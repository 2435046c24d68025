"""``bitalloc export``: write a plan as another toolkit's quantization config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._common import (
    EXIT_BAD_INPUT,
    CliError,
    add_options_flag,
    check_output,
    key_values,
)


def cmd_export(args: argparse.Namespace) -> int:
    from ..backends.export import EXPORTERS, raised_units
    from ..search._io import atomic_write_text
    from ..search.solution import Solution

    if args.to not in EXPORTERS.names():
        raise CliError(f"unknown target {args.to!r}; available: {', '.join(EXPORTERS.names())}")
    exp = EXPORTERS.get(args.to, **key_values(args.option or []))
    out = args.out or f"{Path(args.plan).with_suffix('')}.{args.to}{exp.suffix}"
    check_output(out, "-o/--out")
    if args.save_plan:
        check_output(args.save_plan, "--save-plan")
    sol = Solution.load(args.plan)
    bad = exp.check(sol)
    if bad and not args.fix:
        head = f"bitalloc export: the plan breaks {len(bad)} rule(s) of {args.to}:"
        print(head, file=sys.stderr)
        for v in bad:
            print(f"  {v}", file=sys.stderr)
        print(
            "rerun with --fix to raise those units to the nearest supported format",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if bad:
        fixed = exp.fix(sol)
        for name, old, new in raised_units(sol, fixed):
            print(f"raised {name}: {old} -> {new}")
        change = 100.0 * (fixed.nbytes - sol.nbytes) / sol.nbytes
        print(
            f"{len(bad)} violation(s) fixed: bytes {sol.nbytes:,} -> {fixed.nbytes:,} "
            f"({change:+.1f}%), avg bits {sol.avg_bits:.4f} -> {fixed.avg_bits:.4f}"
        )
        sol = fixed
    elif args.fix:
        print(f"no violations of {args.to}'s rules: nothing to fix")
    atomic_write_text(out, exp.serialize(exp.render(sol)))
    print(f"{args.to} config written to {out}")
    if args.save_plan:  # only once the export itself is written
        sol.save(args.save_plan)
        print(f"plan written to {args.save_plan}")
    return 0


def register(sub: Any) -> None:
    """Add this module's commands to ``bitalloc``'s subparsers."""
    ex = sub.add_parser("export", help="write a plan as another toolkit's quantization config")
    ex.add_argument("plan")
    ex.add_argument("--to", required=True, help="export target (see `bitalloc list`)")
    ex.add_argument("-o", "--out", help="file to write (default: PLAN.TARGET.SUFFIX)")
    ex.add_argument(
        "--fix",
        action="store_true",
        help="raise units that break the target's rules to a supported format",
    )
    add_options_flag(ex, "exporter option, e.g. runtime=transformers (repeatable)")
    ex.add_argument("--save-plan", help="also write the (fixed) plan to this file")
    ex.set_defaults(func=cmd_export)
