"""``bitalloc study create|run|worker|show|dashboard`` (registered by ``bitalloc.cli``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from .storage import StorageOptions

KINDS = ("sample", "budget-sweep", "estimator-comparison", "solver-comparison")
STORAGE_HELP = (
    "journal file (*.journal), SQLite file (*.db) or URL (sqlite:///..., "
    "postgresql://user@host/db); default runs/NAME.journal"
)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _quiet_optuna() -> None:
    """Optuna logs every trial at INFO; the commands print their own lines."""
    import logging

    import optuna

    if not logging.getLogger("bitalloc").isEnabledFor(logging.INFO):
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def _options(args: argparse.Namespace) -> StorageOptions:
    return StorageOptions(heartbeat_interval=args.heartbeat, grace_period=args.grace)


def _config(args: argparse.Namespace) -> Any:
    from .study import StudyConfig
    from .sweeps import check_names

    common = {
        "model": args.model,
        "formats": _names(args.formats),
        "tie": args.tie,
        "seed": args.seed,
        "n_windows": args.windows,
        "seq_len": args.seq_len,
        "n_calib": args.n_calib,
        "corpus": args.corpus,
    }
    if args.kind == "sample":
        cfg = StudyConfig(
            kind="sample",
            budgets=args.budgets or (),
            estimators=args.estimators or ("auto",),
            sampler=args.sampler,
            **common,
        )
    else:
        default_budgets = (2.5, 3.0, 3.5, 4.0, 5.0)
        cfg = StudyConfig(
            kind="sweep",
            budgets=args.budgets or default_budgets,
            estimators=args.estimators or ("auto",),
            solvers=args.solvers or ("ilp",),
            **common,
        )
        axis = {"estimator-comparison": "estimators", "solver-comparison": "solvers"}
        if args.kind in axis and len(getattr(cfg, axis[args.kind])) < 2:
            raise ValueError(f"{args.kind} needs at least two --{axis[args.kind]}")
    check_names(cfg)
    return cfg


def cmd_create(args: argparse.Namespace) -> int:
    from .objective import PlanObjective
    from .storage import resolve_storage
    from .study import create_study

    _quiet_optuna()
    config = _config(args)
    objective = PlanObjective.from_config(config)  # fails early on a bad model or formats
    spec = resolve_storage(args.storage, args.name)
    study = create_study(args.name, config, spec, n_trials=args.n_trials)
    queued = len(study.trials)
    print(
        f"study {args.name!r} created in {spec.describe()}: {config.kind} on "
        f"{len(objective.space)} units ({len(objective.params)} units/tie groups), "
        f"{queued} trials queued"
    )
    return 0


def _progress(quiet: bool) -> Any:
    if quiet:
        return None

    def cb(study: Any, trial: Any) -> None:
        a = trial.user_attrs
        detail = (
            f"avg bits {a['avg_bits']:.4f}  kl {a['kl']:.5g}  ppl {a['ppl']:.4g}"
            if "kl" in a and trial.state.name == "COMPLETE"
            else a.get("infeasible", a.get("error", ""))
        )
        print(f"trial {trial.number:>4} {trial.state.name:<8} {detail}", flush=True)

    return cb


def _work(args: argparse.Namespace, extra: int) -> int:
    from ..models import cache_dir
    from .objective import PlanObjective
    from .study import add_slots, load_study, make_sampler
    from .worker import run_worker

    _quiet_optuna()
    study, config = load_study(args.name, args.storage, seed=args.seed, options=_options(args))
    if args.seed is None and args.study_command == "worker":
        # parallel workers with one seed would sample the same plans; `run` stays reproducible
        study.sampler = make_sampler(config, config.seed + os.getpid())
    if extra:
        if config.kind != "sample":
            raise ValueError("--n-trials adds sampled trials; a sweep's grid is queued at create")
        add_slots(study, extra)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)  # several workers on one machine: 1 each
    objective = PlanObjective.from_config(config, cache_dir=cache_dir())
    report = run_worker(
        study, objective, max_trials=args.max_trials, callback=_progress(args.quiet)
    )
    print(
        f"worker done: {report.completed} complete, {report.failed} failed, "
        f"{report.pruned} pruned in {report.time_s:.1f} s"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _work(args, args.n_trials)


def cmd_worker(args: argparse.Namespace) -> int:
    return _work(args, 0)


def cmd_show(args: argparse.Namespace) -> int:
    from optuna.trial import TrialState

    _quiet_optuna()
    from ..search._io import atomic_write_text
    from .plots import save_pareto_plots, trial_rows
    from .study import load_study, trial_plan

    if args.plan is not None:
        from ..cli._common import check_output

        check_output(args.out, "--out")
    study, config = load_study(args.name, args.storage)
    if args.plan is not None:
        match = [t for t in study.get_trials(deepcopy=False) if t.number == args.plan]
        if not match:
            raise ValueError(f"--plan: study {args.name!r} has no trial {args.plan}")
        plan = trial_plan(match[0])
        atomic_write_text(args.out, json.dumps(plan.to_dict(), indent=1) + "\n")
        print(f"plan of trial {args.plan} written to {args.out}")
        return 0
    rows = trial_rows(study, args.y)
    counts = {
        s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState
    }
    if args.json:
        print(json.dumps({"config": config.to_dict(), "counts": counts, "trials": rows}, indent=1))
    else:
        print(f"study {args.name}: {config.kind} on {config.model}")
        print("trials: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
        print(
            f"{'#':>5} {'series':<14} {'avg bits':>9} {'bytes':>12} {'kl':>10} {'ppl':>10}  front"
        )
        for r in rows:
            print(
                f"{r['number']:>5} {r['series']:<14} {r['avg_bits']:>9.4f} {r['bytes']:>12,} "
                f"{r['kl']:>10.5g} {r['ppl']:>10.5g}  {'*' if r['pareto'] else ''}"
            )
    if args.plot:
        png, html = save_pareto_plots(study, args.plot, y=args.y)
        print(f"Pareto plots written to {png} and {html}", file=sys.stderr)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard import Dashboard
    from .storage import resolve_storage

    spec = resolve_storage(args.storage, args.name or "study")
    # SIGTERM (and SIGINT) leave the block below, which stops the server process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with Dashboard.start(spec, host=args.host, port=args.port) as server:
        print(f"optuna-dashboard serving {spec.describe()} at {server.url}/dashboard", flush=True)
        print("press Ctrl-C to stop", flush=True)
        try:
            while server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


def register(sub: Any) -> None:
    """Add the ``study`` command and its sub-commands to ``bitalloc``'s subparsers."""
    study = sub.add_parser("study", help="Optuna studies: create, run, worker, show, dashboard")
    ss = study.add_subparsers(dest="study_command", required=True)

    c = ss.add_parser("create", help="create a study and queue its trials")
    c.add_argument("name")
    c.add_argument("--model", required=True, help="built-in name or local model folder")
    c.add_argument("--storage", help=STORAGE_HELP)
    c.add_argument("--kind", choices=KINDS, default="sample")
    c.add_argument("--budgets", type=_floats, help="avg bits: sweep grid / sample constraint")
    c.add_argument("--estimators", type=_names, help="comma-separated (default auto)")
    c.add_argument("--solvers", type=_names, help="comma-separated (default ilp)")
    c.add_argument("--formats", default="int2-g64,int3-g64,int4-g64,int8-g64")
    c.add_argument("--tie", default="auto", help="'auto', 'none' or comma-separated regexes")
    c.add_argument("--sampler", choices=("tpe", "random", "nsga2"), default="tpe")
    c.add_argument("--n-trials", type=int, default=0, help="sampled trials to queue")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--windows", type=int, default=4, help="held-out windows per trial")
    c.add_argument("--seq-len", type=int, default=128)
    c.add_argument("--n-calib", type=int, default=8, help="calibration windows (estimators)")
    c.add_argument("--corpus", default="wikipedia-heldout", help="held-out text to measure on")
    c.set_defaults(func=cmd_create)

    for name, func, text in (
        ("run", cmd_run, "resume a study here: fail stale trials, drain the queue"),
        ("worker", cmd_worker, "one of many workers sharing a study (any storage URL)"),
    ):
        w = ss.add_parser(name, help=text)
        w.add_argument("name")
        w.add_argument("--storage", help=STORAGE_HELP)
        if name == "run":
            w.add_argument("--n-trials", type=int, default=0, help="queue this many more trials")
        w.add_argument("--max-trials", type=int, help="stop after this many trials")
        w.add_argument(
            "--seed",
            type=int,
            help="sampler seed (default: the study's for run, study's + pid for worker)",
        )
        w.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
        w.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval (s)")
        w.add_argument("--grace", type=int, help="stale after this many s (default 2x)")
        w.add_argument("-q", "--quiet", action="store_true", help="no line per trial")
        w.set_defaults(func=func)

    s = ss.add_parser("show", help="trials, Pareto front, plots, one trial's plan")
    s.add_argument("name")
    s.add_argument("--storage", help=STORAGE_HELP)
    s.add_argument("--y", choices=("ppl", "kl"), default="ppl", help="quality axis")
    s.add_argument("--plot", metavar="PREFIX", help="write PREFIX.png and PREFIX.html")
    s.add_argument("--plan", type=int, metavar="N", help="write trial N's plan JSON to --out")
    s.add_argument("--out", default="plan.json")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

    d = ss.add_parser("dashboard", help="serve optuna-dashboard on the study's storage")
    d.add_argument("name", nargs="?", help="study name (locates the default storage)")
    d.add_argument("--storage", help=STORAGE_HELP)
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, help="default: a free port")
    d.set_defaults(func=cmd_dashboard)
