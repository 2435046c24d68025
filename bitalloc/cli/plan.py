"""``bitalloc search``, ``eval``, ``show`` and ``list``."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ._common import (
    DEFAULT_ESTIMATOR,
    DEFAULT_FORMATS,
    ESTIMATOR_HELP,
    CliError,
    budget_from,
    check_name,
    estimate_table,
    load_model,
    progress,
    read_text,
)


def cmd_search(args: argparse.Namespace) -> int:
    from ..data import calibration
    from ..search.api import solve_with_fitness
    from ..search.formats import parse_formats
    from ..search.problem import Problem
    from ..search.solution import Status
    from ..search.space import SearchSpace
    from ..solvers import SOLVERS

    budget = budget_from(args)
    formats = parse_formats(args.formats)
    for kind, name in (("estimator", args.estimator), ("solver", args.solver)):
        check_name(kind, name)
    opts = _solver_options(args)
    model, tok = load_model(args.model)
    calib = (
        calibration(tok, args.n_samples, args.seq_len, seed=args.seed) if args.n_samples else None
    )
    tie = None if args.tie == "none" else ("auto" if args.tie == "auto" else args.tie.split(","))
    if args.channel_group is not None and args.tie == "auto":
        tie = None  # ties bind whole layers; channel groups split them
    space = SearchSpace.from_model(
        model,
        formats,
        include=args.include or (),
        exclude=args.exclude,
        channel_group=args.channel_group,
        tie=tie,
        example_input=calib.batches[0] if calib else None,
    )
    table = estimate_table(model, space, calib, args)
    problem = Problem.build(table, budget)
    if problem.max_cost() < budget.capacity_bits(space):
        top = budget.from_bits(problem.max_cost(), space)
        raise CliError(
            f"budget {budget.describe()} is above the maximum {top:.6g} of this "
            "search space (every unit at its largest format); lower it or add formats"
        )
    sol = solve_with_fitness(
        model, calib, table, budget, SOLVERS.get(args.solver, **opts), args.fitness
    )
    if sol.status is Status.INFEASIBLE:
        raise CliError(sol.message)
    if args.table:
        table.save(args.table)
    sol.save(args.out)
    print(sol.summary())
    print(f"plan written to {args.out}")
    return 0


def _solver_options(args: argparse.Namespace) -> dict[str, Any]:
    """Solver options from the search flags (``--generations`` etc. only where valid)."""
    import dataclasses

    from ..solvers import SOLVERS

    cls = SOLVERS.cls(args.solver)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    flags = {"generations": args.generations, "offspring": args.offspring}
    flags["checkpoint"] = args.checkpoint
    opts = {k: v for k, v in flags.items() if v is not None}
    if set(opts) - fields:
        bad = ", ".join(f"--{k}" for k in sorted(set(opts) - fields))
        raise CliError(f"{bad} not valid for solver {args.solver!r}")
    if "seed" in fields:
        opts["seed"] = args.seed
    if "callback" in fields:
        opts["callback"] = progress(args.solver, args.quiet)
    return opts


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_plan
    from ..search.solution import Solution

    sol = Solution.load(args.plan)
    model_name = args.model or sol.meta.get("model")
    if not model_name:
        raise CliError("the plan does not name its model; pass --model")
    text = None
    if args.text:
        text = read_text(args.text, "--text")
    model, tok = load_model(model_name)
    calib = None
    if args.backend == "gptq":  # calibration-aware: wikipedia-calib windows
        from ..data import calibration

        calib = calibration(tok, args.n_samples, args.seq_len)
    result = evaluate_plan(
        model,
        tok,
        sol,
        text=text,
        n_windows=args.windows,
        seq_len=args.seq_len,
        backend=args.backend,
        calib=calib,
        callback=progress("eval", args.quiet),
    )
    if args.json:
        print(json.dumps(result, indent=1, default=_json_default))
    else:
        print(_eval_table(result))
    return 0


def _json_default(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else str(x)


def _eval_table(result: dict[str, Any]) -> str:
    lm = "ppl" in result["reference"]
    metric = f"{'ppl':>10} {'kl':>10}" if lm else f"{'fidelity':>10}"
    lines = [f"{'model':<10} {'format':<12} {'avg bits':>9} {metric}"]
    for name in ("reference", "plan", "uniform"):
        r = result.get(name)
        if r is None:
            lines.append(f"{name:<10} (no uniform format fits under the plan's bits)")
            continue
        fmt = r.get("format", "float" if name == "reference" else "mixed")
        value = f"{r['ppl']:>10.4f} {r['kl']:>10.5f}" if lm else f"{r['fidelity']:>10.5f}"
        lines.append(f"{name:<10} {fmt:<12} {r['avg_bits']:>9.4f} {value}")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    from ..search.solution import Solution

    sol = Solution.load(args.plan)
    print(sol.summary())
    if args.units:
        print(sol.to_frame().to_string(index=False))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..models import names as model_names
    from ..search.api import KINDS, available

    for kind in KINDS:
        print(f"{kind}s: {', '.join(available(kind))}")
    print(f"models: {', '.join(model_names())} (or a local Hugging Face model folder)")
    return 0


def register(sub: Any) -> None:
    """Add this module's commands to ``bitalloc``'s subparsers."""
    s = sub.add_parser("search", help="estimate sensitivities and solve for a plan")
    s.add_argument(
        "--model", required=True, help="built-in name (smollm2-135m, minilm-l6) or folder"
    )
    s.add_argument("--avg-bits", type=float, help="budget: effective bits per weight")
    s.add_argument("--bytes", type=float, help="budget: total bytes of the searched weights")
    s.add_argument(
        "--formats",
        default=DEFAULT_FORMATS,
        help="comma-separated format keys (default: %(default)s)",
    )
    s.add_argument(
        "--estimator",
        default=DEFAULT_ESTIMATOR,
        help=ESTIMATOR_HELP,
    )
    s.add_argument("--solver", default="ilp")
    s.add_argument("--tie", default="auto", help="'auto', 'none' or comma-separated regexes")
    s.add_argument(
        "--channel-group",
        type=int,
        help="split layers into units of this many output channels (per-channel allocation)",
    )
    s.add_argument("--include", nargs="*", help="unit patterns to keep (glob or re:REGEX)")
    s.add_argument(
        "--exclude", nargs="*", help="unit patterns to drop (default: embeddings, lm_head)"
    )
    s.add_argument("--n-samples", type=int, default=32, help="calibration windows (0 = none)")
    s.add_argument("--seq-len", type=int, default=512)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-cache", action="store_true", help="recompute the sensitivity table")
    s.add_argument("--generations", type=int, help="evopress: generations")
    s.add_argument("--offspring", type=int, help="evopress: offspring per generation")
    s.add_argument("--checkpoint", help="evopress: resumable state file (JSON)")
    s.add_argument(
        "--fitness",
        choices=("auto", "kl", "table"),
        default="auto",
        help="black-box solvers: measured KL on the calibration tokens or the table's "
        "predicted loss (auto: kl for evopress, table for optuna/nsga2)",
    )
    s.add_argument("--table", help="also write the sensitivity table (.npz)")
    s.add_argument("--out", default="plan.json", help="plan file to write (default: %(default)s)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_search)

    e = sub.add_parser("eval", help="perplexity/KL of a plan vs the reference and uniform RTN")
    e.add_argument("plan")
    e.add_argument("--model", help="override the model named in the plan")
    e.add_argument("--text", help="evaluate on this text file instead of held-out Wikipedia")
    e.add_argument("--windows", type=int, default=16, help="number of held-out windows")
    e.add_argument("--seq-len", type=int, default=512)
    e.add_argument("--backend", default="rtn", help="how to apply the plans: rtn or gptq")
    e.add_argument("--n-samples", type=int, default=16, help="gptq calibration windows")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval)

    sh = sub.add_parser("show", help="summarise a plan")
    sh.add_argument("plan")
    sh.add_argument("--units", action="store_true", help="list every unit")
    sh.set_defaults(func=cmd_show)

    ls = sub.add_parser(
        "list", help="registered estimators, solvers, backends, exporters and models"
    )
    ls.set_defaults(func=cmd_list)
