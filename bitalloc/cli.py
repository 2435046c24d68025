"""The ``bitalloc`` command: search, eval, show, list.

Exit codes: 0 success, 1 runtime failure, 2 bad input (unknown names, bad budget, malformed
plan, infeasible budget). Nothing is written unless the command succeeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__

EXIT_BAD_INPUT = 2
DEFAULT_FORMATS = "int2-g64,int3-g64,int4-g64,int8-g64"
DEFAULT_ESTIMATOR = "auto"  # = bitalloc.search.api.DEFAULT_ESTIMATOR (kept import-free)
ESTIMATOR_HELP = "registered name, or 'auto' (fisher for causal LMs, else weight_error; default)"


class CliError(Exception):
    """Bad input detected by the CLI (exit code 2)."""


def _progress(desc: str, quiet: bool) -> Any:
    """A ``callback(done, total, ...)`` drawing a tqdm bar on stderr."""
    if quiet:
        return None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def cb(done: int, total: int, label: str = desc) -> None:
        bar = bars.get(label)
        if bar is None:
            bar = bars[label] = tqdm(total=total, desc=label, leave=False, file=sys.stderr)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            bars.pop(label)

    return cb


def _load_model(name: str) -> tuple[Any, Any]:
    from .models import load

    started = time.perf_counter()
    model, tok = load(name)
    logging.getLogger("bitalloc").info(
        "model %s loaded in %.1f s", name, time.perf_counter() - started
    )
    return model, tok


def _budget(args: argparse.Namespace) -> Any:
    from .search.budget import Budget

    if (args.avg_bits is None) == (args.bytes is None):
        raise CliError("give exactly one of --avg-bits or --bytes")
    return (
        Budget.avg_bits(args.avg_bits) if args.avg_bits is not None else Budget.bytes(args.bytes)
    )


def cmd_search(args: argparse.Namespace) -> int:
    from .data import calibration
    from .models import cache_dir
    from .search.api import available, estimate
    from .search.formats import parse_formats
    from .search.problem import Problem
    from .search.solution import Status
    from .search.space import SearchSpace

    budget = _budget(args)
    formats = parse_formats(args.formats)
    for kind, name in (("estimator", args.estimator), ("solver", args.solver)):
        if name not in available(kind) and not (kind == "estimator" and name == "auto"):
            raise CliError(f"unknown {kind} {name!r}; available: {', '.join(available(kind))}")
    opts = _solver_options(args)
    model, tok = _load_model(args.model)
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
    table = estimate(
        model,
        space,
        calib,
        args.estimator,
        cache_dir=None if args.no_cache else cache_dir(),
        callback=_progress(args.estimator, args.quiet),
    )
    problem = Problem.build(table, budget)
    if problem.max_cost() < budget.capacity_bits(space):
        top = budget.from_bits(problem.max_cost(), space)
        raise CliError(
            f"budget {budget.describe()} is above the maximum {top:.6g} of this "
            "search space (every unit at its largest format); lower it or add formats"
        )
    sol = _solve_search(model, calib, space, table, budget, args.solver, opts)
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

    from .solvers import SOLVERS

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
        opts["callback"] = _progress(args.solver, args.quiet)
    return opts


def _solve_search(
    model: Any, calib: Any, space: Any, table: Any, budget: Any, name: str, opts: dict[str, Any]
) -> Any:
    """A black-box solver (evopress) with calibration data optimises the measured KL
    (KLEvaluator on RTN variants); other solvers optimise the table."""
    from .search.api import solve
    from .solvers import SOLVERS

    if calib is None or not getattr(SOLVERS.cls(name), "black_box", False):
        return solve(table, budget, name, **opts)
    from .backends.kl_evaluator import KLEvaluator

    with KLEvaluator(model, calib, space) as kl:
        return solve(table, budget, name, evaluate=kl, **opts)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_plan
    from .search.solution import Solution

    sol = Solution.load(args.plan)
    model_name = args.model or sol.meta.get("model")
    if not model_name:
        raise CliError("the plan does not name its model; pass --model")
    text = None
    if args.text:
        try:
            text = Path(args.text).read_text(encoding="utf-8")
        except OSError as e:
            raise CliError(f"cannot read --text {args.text!r}: {e.strerror}") from None
    model, tok = _load_model(model_name)
    calib = None
    if args.backend == "gptq":  # calibration-aware: wikipedia-calib windows
        from .data import calibration

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
        callback=_progress("eval", args.quiet),
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


def cmd_validate(args: argparse.Namespace) -> int:
    from .data import calibration, windows
    from .models import cache_dir
    from .search.api import available, estimate
    from .search.formats import parse_formats
    from .search.space import SearchSpace
    from .validate import validate_estimator

    if args.estimator not in (*available("estimator"), "auto"):
        raise CliError(
            f"unknown estimator {args.estimator!r}; available: {', '.join(available('estimator'))}"
        )
    try:
        budgets = [float(b) for b in args.budgets.split(",")]
    except ValueError:
        raise CliError(
            f"--budgets must be comma-separated numbers, got {args.budgets!r}"
        ) from None
    model, tok = _load_model(args.model)
    calib = calibration(tok, args.n_samples, args.seq_len, seed=args.seed)
    space = SearchSpace.from_model(
        model, parse_formats(args.formats), tie="auto", example_input=calib.batches[0]
    )
    table = estimate(
        model,
        space,
        calib,
        args.estimator,
        cache_dir=None if args.no_cache else cache_dir(),
        callback=_progress(args.estimator, args.quiet),
    )
    win = windows(tok, "wikipedia-heldout", args.seq_len, args.windows)
    report = validate_estimator(
        model,
        table,
        win,
        budgets=budgets,
        n_plans=args.n_plans,
        seed=args.seed,
        callback=_progress("plans", args.quiet),
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
        print(f"  ({report.time_s:.0f} s)")
    return 0


def _parse_budgets(text: str) -> list[float]:
    """``start:stop:step`` (stop included) and comma lists of numbers or ranges, in avg bits."""
    out: list[float] = []
    for part in text.split(","):
        try:
            nums = [float(x) for x in part.split(":")]
        except ValueError:
            nums = []
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


def _option_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` solver options; values parsed as JSON when possible (3, 0.5, null)."""
    opts: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--option must be KEY=VALUE, got {pair!r}")
        try:
            opts[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.replace("-", "_")] = value
    return opts


def _heldout_scores(
    model: Any, tok: Any, front: Any, subset: Any, args: argparse.Namespace
) -> Any:
    """``front`` with the KL to the reference and the perplexity of every distinct feasible
    plan of ``subset`` (RTN, held-out Wikipedia or ``--text`` windows), four plans per
    reference pass."""
    import copy

    from .data import evaluate_lm, windows
    from .search.api import apply

    source = "wikipedia-heldout"
    if args.text:
        try:
            source = Path(args.text).read_text(encoding="utf-8")
        except OSError as e:
            raise CliError(f"cannot read --text {args.text!r}: {e.strerror}") from None
    win = windows(tok, source, args.eval_seq_len, args.windows)
    plans = list({p.choice: p for p in subset.points if p.success}.values())
    scores: dict[tuple[str, ...], dict[str, float]] = {}
    bar = _progress("evaluate", args.quiet)
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

    from .data import calibration
    from .models import cache_dir
    from .search._io import atomic_write_text
    from .search.api import available, estimate, frontier
    from .search.budget import Budget
    from .search.formats import parse_formats
    from .search.space import SearchSpace
    from .solvers import SOLVERS

    budgets = _parse_budgets(args.budgets)
    formats = parse_formats(args.formats)
    if args.estimator not in (*available("estimator"), "auto"):
        raise CliError(
            f"unknown estimator {args.estimator!r}; available: {', '.join(available('estimator'))}"
        )
    if args.solver not in available("solver"):
        raise CliError(
            f"unknown solver {args.solver!r}; available: {', '.join(available('solver'))}"
        )
    opts = _option_pairs(args.option or ())
    if "seed" in {f.name for f in dataclasses.fields(SOLVERS.cls(args.solver))}:
        opts.setdefault("seed", args.seed)
    impl = SOLVERS.get(args.solver, **opts)
    model, tok = _load_model(args.model)
    calib = calibration(tok, args.n_samples, args.seq_len, seed=args.seed)
    space = SearchSpace.from_model(model, formats, tie="auto", example_input=calib.batches[0])
    table = estimate(
        model,
        space,
        calib,
        args.estimator,
        cache_dir=None if args.no_cache else cache_dir(),
        callback=_progress(args.estimator, args.quiet),
    )
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
    front.save(out / "frontier.json")
    atomic_write_text(out / "frontier.csv", frame.to_csv(index=False))
    by = "kl" if "kl" in front.metrics() else "predicted"
    title = f"{args.model}: {table.estimator}, {args.solver}"
    front.plot(out / "frontier.png", by=by, title=title)
    cols = ["avg_bits", "predicted_loss", *front.metrics(), "status"]
    rows = shown.to_frame()
    if native:  # the requested budgets next to the best Pareto point within each
        rows["budget"] = [b for b in budgets if any(p.avg_bits <= b for p in front.points)]
    print(rows.to_string(index=False, columns=["budget", *cols], float_format="{:.5g}".format))
    print(f"{len(front)} points solved in {solve_s:.1f} s; written to {out}/frontier.*")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .search.solution import Solution

    sol = Solution.load(args.plan)
    print(sol.summary())
    if args.units:
        print(sol.to_frame().to_string(index=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .backends.export import EXPORTERS, raised_units
    from .search._io import atomic_write_text
    from .search.solution import Solution

    if args.to not in EXPORTERS.names():
        raise CliError(f"unknown target {args.to!r}; available: {', '.join(EXPORTERS.names())}")
    exp = EXPORTERS.get(args.to, **_key_values(args.option or []))
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
    if args.save_plan:
        sol.save(args.save_plan)
    out = args.out or f"{Path(args.plan).with_suffix('')}.{args.to}{exp.suffix}"
    atomic_write_text(out, exp.serialize(exp.render(sol)))
    print(f"{args.to} config written to {out}")
    return 0


def _key_values(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` options; VALUE parsed as JSON (true, 4, "x") or else kept as text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--option must look like KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_list(args: argparse.Namespace) -> int:
    from .models import names as model_names
    from .search.api import KINDS, available

    for kind in KINDS:
        print(f"{kind}s: {', '.join(available(kind))}")
    print(f"models: {', '.join(model_names())} (or a local Hugging Face model folder)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bitalloc", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"bitalloc {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

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

    v = sub.add_parser("validate", help="rank correlation of predicted vs measured loss")
    v.add_argument("--model", required=True)
    v.add_argument(
        "--estimator",
        default=DEFAULT_ESTIMATOR,
        help=ESTIMATOR_HELP,
    )
    v.add_argument("--n-plans", type=int, default=32)
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

    fr = sub.add_parser("frontier", help="plans over a range of budgets: JSON, CSV and Pareto PNG")
    fr.add_argument("--model", required=True, help="built-in name or local model folder")
    fr.add_argument(
        "--budgets", required=True, help="avg bits: start:stop:step (inclusive) and/or a,b,c"
    )
    fr.add_argument("--solver", default="ilp", help="nsga2: one Pareto run up to the largest")
    fr.add_argument(
        "-O",
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="solver option, e.g. n_gen=100 (repeatable)",
    )
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

    ls = sub.add_parser(
        "list", help="registered estimators, solvers, backends, exporters and models"
    )
    ls.set_defaults(func=cmd_list)

    ex = sub.add_parser("export", help="write a plan as another toolkit's quantization config")
    ex.add_argument("plan")
    ex.add_argument("--to", required=True, help="export target (see `bitalloc list`)")
    ex.add_argument("-o", "--out", help="file to write (default: PLAN.TARGET.SUFFIX)")
    ex.add_argument(
        "--fix",
        action="store_true",
        help="raise units that break the target's rules to a supported format",
    )
    ex.add_argument(
        "-O",
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="exporter option, e.g. runtime=transformers (repeatable)",
    )
    ex.add_argument("--save-plan", help="also write the (fixed) plan to this file")
    ex.set_defaults(func=cmd_export)

    from .studies.cli import register as register_studies  # optuna loads only when run

    register_studies(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (CliError, ValueError, TypeError) as e:
        print(f"bitalloc {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
