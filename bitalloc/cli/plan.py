"""``bitalloc search``, ``eval``, ``show`` and ``list``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..defaults import parse_tie
from ._common import (
    DEFAULT_ESTIMATOR,
    DEFAULT_FORMATS,
    ESTIMATOR_HELP,
    CliError,
    add_options_flag,
    budget_from,
    cache_dir,
    check_name,
    check_output,
    key_values,
    load_model,
    plan_calibration,
    progress,
    read_text,
)


def cmd_search(args: argparse.Namespace) -> int:
    from ..data import calibration
    from ..search.formats import parse_formats
    from ..search.oneshot import search_with_table
    from ..search.problem import Problem
    from ..search.solution import Status

    if args.tensors_only and (args.target != "llama.cpp" or args.bytes is None):
        raise CliError("--tensors-only goes with --target llama.cpp --bytes N")
    if args.target == "llama.cpp" and args.bytes is not None and not args.tensors_only:
        if args.file_bytes is not None:
            raise CliError("give exactly one of --avg-bits or --bytes or --file-bytes")
        args.file_bytes, args.bytes = args.bytes, None  # the target's default: the whole file
    budget = budget_from(args)
    formats = (
        None
        if args.formats is None and args.target
        else parse_formats(args.formats or DEFAULT_FORMATS)
    )
    if args.target:
        from ..search.targets import get_target

        get_target(args.target).menu(formats)  # ValueError -> exit 2 before the model loads
    if args.embedding_type is not None or args.float is not None:
        if budget is not None:
            raise CliError("--embedding-type and --float price a whole GGUF: use --file-bytes")
        if args.embedding_type is not None:
            from ..search.formats import QuantFormat

            QuantFormat.ggml_type(args.embedding_type)  # ValueError names the valid types
        if args.float is not None and not Path(args.float).is_file():
            raise CliError(f"--float: no such GGUF file: {args.float}")
    for flag in ("lm_head", "embeddings"):
        if getattr(args, flag) and args.exclude is not None:
            name = "--" + flag.replace("_", "-")
            raise CliError(f"{name} replaces the default --exclude; give one or the other")
    if args.file_bytes is not None and args.embedding_type is None and args.exclude is None:
        # the whole file: lm_head and the token embedding (tied to it, or not) are searched
        args.lm_head = args.embeddings = True
    check_name("estimator", args.estimator)
    if args.solver is not None:
        check_name("solver", args.solver)
    if args.backend != "auto":
        check_name("backend", args.backend)
    opts = _solver_options(args)
    check_output(args.out, "--out")
    if args.table:
        check_output(args.table, "--table")
    if args.checkpoint:
        check_output(args.checkpoint, "--checkpoint")
    model, tok = load_model(args.model, [("--seq-len", args.seq_len)])
    calib = (
        calibration(tok, args.n_samples, args.seq_len, seed=args.seed) if args.n_samples else None
    )
    tie = parse_tie(args.tie)
    if args.channel_group is not None and args.tie == "auto":
        tie = None  # ties bind whole layers; channel groups split them
    if budget is None:
        budget = _file_budget(args, model, formats, calib)
    solver = None
    if args.solver is not None:
        from ..solvers import SOLVERS

        solver = SOLVERS.get(args.solver, **opts)
    table, sol = search_with_table(
        model,
        calib,
        budget,
        formats=formats,
        target=args.target,
        estimator=args.estimator,
        solver=solver,
        backend=args.backend,
        effort=args.effort,
        time_limit=args.time_limit,
        include=args.include or (),
        exclude=args.exclude,
        tie=tie,
        channel_group=args.channel_group,
        lm_head=args.lm_head,
        embeddings=args.embeddings,
        cache_dir=None if args.no_cache else cache_dir(),
        callback=progress("search", args.quiet),
        fitness=args.fitness,
        seed=args.seed,
    )
    problem = Problem.build(table, budget)
    if problem.max_cost() < budget.capacity_bits(table.space):
        top = budget.from_bits(problem.max_cost(), table.space)
        raise CliError(
            f"budget {budget.describe()} is above the maximum {top:.6g} of this "
            "search space (every unit at its largest format); lower it or add formats"
        )
    if sol.status is Status.INFEASIBLE:
        raise CliError(sol.message)
    if args.file_bytes is not None:
        import dataclasses

        from ..backends.export.gguf_file import searches_embedding

        gguf = {
            "embedding_type": None
            if searches_embedding(sol.space)
            else (args.embedding_type or "q8_0"),
            "file_bytes": int(args.file_bytes),
            "fixed_bytes": int(budget.fixed),
        }
        sol = dataclasses.replace(sol, meta={**sol.meta, "gguf": gguf})
    if args.table:
        table.save(args.table)
    sol.save(args.out)
    print(sol.summary())
    print(f"plan written to {args.out}")
    return 0


def _file_budget(args: argparse.Namespace, model: Any, formats: Any, calib: Any) -> Any:
    """``--file-bytes``: the whole GGUF file llama-quantize will write (header with a reserved
    imatrix path when calibration feeds the ggml backend's imatrix, the token embedding at
    ``--embedding-type``, norms), of which the searched tensors get the rest."""
    from ..backends.export.gguf_file import (
        embedding_searched,
        file_budget,
        reserved_imatrix_keys,
        searches_embedding,
    )
    from ..search.space import SearchSpace
    from .gguf import float_gguf_of

    source = Path(args.float) if args.float else float_gguf_of(args.model)
    probe = SearchSpace.from_model(
        model,
        formats,
        include=args.include or (),
        exclude=args.exclude,
        tie=None,
        target=args.target,
        lm_head=args.lm_head,
        embeddings=args.embeddings,
    )
    if args.embedding_type is not None and searches_embedding(probe):
        raise CliError(embedding_searched("--embedding-type"))
    imatrix = reserved_imatrix_keys(len(probe)) if calib is not None else None
    return file_budget(
        args.file_bytes,
        source,
        probe,
        embedding_type=args.embedding_type,
        imatrix=imatrix,
    )


def _solver_options(args: argparse.Namespace) -> dict[str, Any]:
    """Solver options from ``-O KEY=VALUE`` and its aliases (``--generations``,
    ``--offspring``, ``--checkpoint``), each only where the solver has that field."""
    import dataclasses

    from ..solvers import SOLVERS

    flags = {"generations": args.generations, "offspring": args.offspring}
    flags["checkpoint"] = args.checkpoint
    aliases = {k: v for k, v in flags.items() if v is not None}
    given = key_values(args.option or [])
    opts = {**given, **aliases}
    names = {**{k: f"-O {k}" for k in given}, **{k: f"--{k}" for k in aliases}}

    def fields(name: str) -> set[str]:
        cls = SOLVERS.cls(name)
        return {f.name for f in dataclasses.fields(cls) if f.init}

    if args.solver is None:
        if opts:
            bad = ", ".join(names[k] for k in sorted(opts))
            takers = [n for n in SOLVERS.names() if set(opts) <= fields(n)] or ["NAME"]
            raise CliError(
                f"{bad} need --solver {' or '.join(takers)} (the default pipeline sets its own)"
            )
        return {}
    valid = fields(args.solver)
    if set(opts) - valid:
        bad = ", ".join(names[k] for k in sorted(set(opts) - valid))
        raise CliError(
            f"{bad} not valid for solver {args.solver!r}; its options: {', '.join(sorted(valid))}"
        )
    if "seed" in valid:
        opts["seed"] = args.seed
    if "callback" in valid:
        opts["callback"] = progress(args.solver, args.quiet)
    return opts


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_plan
    from ..search.api import plan_backend
    from ..search.solution import Solution

    sol = Solution.load(args.plan)
    model_name = args.model or sol.meta.get("model")
    if not model_name:
        raise CliError("the plan does not name its model; pass --model")
    text = None
    if args.text:
        text = read_text(args.text, "--text")
    anchors = _anchor_plans(args, sol)
    model, tok = load_model(model_name, [("--seq-len", args.seq_len)])
    backend = args.backend if args.backend is not None else plan_backend(sol)
    calib = plan_calibration(tok, sol, backend, args)
    result = evaluate_plan(
        model,
        tok,
        sol,
        text=text,
        n_windows=args.windows,
        seq_len=args.seq_len,
        backend=backend,
        calib=calib,
        others=anchors,
        callback=progress("eval", args.quiet),
    )
    if args.json:
        print(json.dumps(result, indent=1, default=_json_default))
    else:
        print(_eval_table(result))
    return 0


def _anchor_plans(args: argparse.Namespace, sol: Any) -> dict[str, Any]:
    """``--anchors`` solved on ``--table`` at exactly the plan's bytes."""
    if not args.anchors:
        return {}
    if not args.table:
        raise CliError("--anchors needs --table (the plan's sensitivity table, from search)")
    from ..search.budget import Budget
    from ..search.table import SensitivityTable
    from ..solvers import SOLVERS

    table = SensitivityTable.load(args.table)
    if [u.name for u in table.space.units] != [u.name for u in sol.space.units]:
        raise CliError(f"--table {args.table!r} is for another search space than the plan")
    out = {}
    for name in args.anchors.split(","):
        check_name("solver", name)
        anchor = SOLVERS.get(name).solve(table, Budget.bytes(sol.nbytes))
        if anchor.success:
            out[name] = anchor
    return out


def _json_default(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else str(x)


_FIXED = ("reference", "plan", "uniform")


def _eval_table(result: dict[str, Any]) -> str:
    lm = "ppl" in result["reference"]
    metric = f"{'ppl':>10} {'kl':>10}" if lm else f"{'fidelity':>10}"
    lines = [f"{'model':<10} {'format':<12} {'avg bits':>9} {metric}"]
    for name in ("reference", "plan", "uniform", *[k for k in result if k not in _FIXED]):
        r = result.get(name)
        if r is None:
            lines.append(f"{name:<10} (no uniform format fits under the plan's bits)")
            continue
        fmt = r.get("format", "float" if name == "reference" else "mixed")
        name = name[:10]
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
    s.add_argument(
        "--bytes",
        type=float,
        help="budget: total bytes of the searched weights (with --target llama.cpp: of the "
        "whole GGUF file, as --file-bytes, unless --tensors-only)",
    )
    s.add_argument(
        "--tensors-only",
        action="store_true",
        help="with --target llama.cpp --bytes: count the searched tensors only",
    )
    s.add_argument(
        "--file-bytes",
        type=float,
        help="budget (--target llama.cpp): bytes of the whole GGUF file, header, token "
        "embedding and norms included; lm_head and the token embedding are searched "
        "unless --embedding-type fixes the embedding's type",
    )
    s.add_argument(
        "--embedding-type",
        help="with --file-bytes: fix the token embedding's ggml type instead of searching it "
        "(not with --lm-head on a tied model, where the plan picks it)",
    )
    s.add_argument("--float", help="with --file-bytes: the model's F32 GGUF (default: converted)")
    s.add_argument(
        "--formats",
        help=f"comma-separated format keys (default: {','.join(DEFAULT_FORMATS)}; "
        "with --target: the target's menu)",
    )
    s.add_argument(
        "--target",
        choices=("llama.cpp", "compressed-tensors"),
        help="offer only the formats this runtime stores (llama.cpp: ggml types built by "
        "ggml's own quantizer, after `make llama-cpp`) and build them with its backend",
    )
    s.add_argument(
        "--estimator",
        default=DEFAULT_ESTIMATOR,
        help=ESTIMATOR_HELP,
    )
    s.add_argument(
        "--solver",
        help="run this solver alone on the table (default: the measured pipeline: exact "
        "solve, measured correction, EvoPress)",
    )
    s.add_argument(
        "--backend",
        default="auto",
        help="what builds (and prices) the weights: auto (the target's backend; else gptq with "
        "calibration, else rtn), rtn, gptq, ggml",
    )
    s.add_argument(
        "--effort",
        choices=("fast", "default", "max"),
        default="default",
        help="how much the default pipeline measures (default: %(default)s)",
    )
    s.add_argument(
        "--time-limit",
        type=float,
        help="seconds for the whole search; later stages stop, the best plan so far is kept",
    )
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
    s.add_argument(
        "--lm-head",
        action="store_true",
        help="search lm_head too; a tied one is the token embedding as well (with "
        "--target llama.cpp: GGUF's token_embd.weight takes the plan's type)",
    )
    s.add_argument(
        "--embeddings",
        action="store_true",
        help="search the embedding tables (nn.Embedding) too; --target llama.cpp only "
        "(GGUF's token_embd.weight takes the plan's type)",
    )
    s.add_argument("--n-samples", type=int, default=16, help="calibration windows (0 = none)")
    s.add_argument("--seq-len", type=int, default=512)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-cache", action="store_true", help="recompute the sensitivity table")
    add_options_flag(s, "option of --solver, e.g. time_limit_s=30 or generations=16 (repeatable)")
    s.add_argument("--generations", type=int, help="alias of -O generations=N")
    s.add_argument("--offspring", type=int, help="alias of -O offspring=N")
    s.add_argument("--checkpoint", help="alias of -O checkpoint=FILE (evopress resumable state)")
    s.add_argument(
        "--fitness",
        choices=("auto", "kl", "table"),
        default="auto",
        help="black-box solvers: measured KL on the calibration tokens or the table's "
        "predicted loss (auto: kl where the solver declares prefers_measured, else table)",
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
    e.add_argument(
        "--backend", help="how to apply the plans (default: the backend the plan records)"
    )
    e.add_argument(
        "--n-samples",
        type=int,
        default=16,
        help="calibration windows when the plan records none and the backend needs them",
    )
    e.add_argument("--table", help="the plan's sensitivity table (search --table), for --anchors")
    e.add_argument(
        "--anchors",
        help="comma-separated anchor solvers (nncf_ratio, mlx_threshold, llamacpp_km) solved on "
        "--table at exactly the plan's bytes and evaluated beside it",
    )
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
