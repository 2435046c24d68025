"""Shared pieces of the ``bitalloc`` commands: errors, progress bars, loading, options."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from .. import defaults

EXIT_BAD_INPUT = 2
DEFAULT_FORMATS = ",".join(defaults.DEFAULT_FORMATS)
DEFAULT_ESTIMATOR = defaults.DEFAULT_ESTIMATOR
ESTIMATOR_HELP = "registered name, or 'auto' (fisher for causal LMs, else weight_error; default)"


class CliError(Exception):
    """Bad input detected by the CLI (exit code 2)."""


def progress(desc: str, quiet: bool) -> Any:
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


def load_model(name: str, lengths: Sequence[tuple[str, int]] = ()) -> tuple[Any, Any]:
    """Load ``name``; ``lengths`` are ``(flag, tokens)`` window lengths the command will run,
    refused when they exceed the model's context (``max_position_embeddings``)."""
    from ..models import load

    started = time.perf_counter()
    model, tok = load(name)
    logging.getLogger("bitalloc").info(
        "model %s loaded in %.1f s", name, time.perf_counter() - started
    )
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    for flag, n in lengths:
        if isinstance(context, int) and n > context:
            raise CliError(f"{flag} {n} is longer than the context of {name} ({context} tokens)")
    return model, tok


def budget_from(args: argparse.Namespace) -> Any:
    """The ``--avg-bits`` / ``--bytes`` budget; ``None`` for ``--file-bytes`` (a whole GGUF
    file, priced once the model is loaded: :func:`file_budget`)."""
    from ..search.budget import Budget

    whole = getattr(args, "file_bytes", None)
    given = [v for v in (args.avg_bits, args.bytes, whole) if v is not None]
    if len(given) != 1:
        flags = "--avg-bits or --bytes"
        if hasattr(args, "file_bytes"):
            flags += " or --file-bytes"
        raise CliError(f"give exactly one of {flags}")
    if whole is not None:
        if getattr(args, "target", None) != "llama.cpp":
            raise CliError("--file-bytes counts a whole GGUF file: use it with --target llama.cpp")
        if whole <= 0:
            raise CliError(f"--file-bytes must be positive, got {whole:g}")
        return None
    return (
        Budget.avg_bits(args.avg_bits) if args.avg_bits is not None else Budget.bytes(args.bytes)
    )


def add_options_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable ``-O/--option KEY=VALUE`` flag (read with :func:`key_values`)."""
    parser.add_argument("-O", "--option", action="append", metavar="KEY=VALUE", help=help)


def key_values(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` options (``-O``); values parsed as JSON when possible (3, 0.5, null)."""
    opts: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--option must look like KEY=VALUE, got {pair!r}")
        try:
            opts[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.replace("-", "_")] = value
    return opts


def check_name(kind: str, name: str) -> None:
    """Refuse an unregistered estimator/solver/backend name, listing the valid ones."""
    from ..search.api import available

    names = available(kind)
    if name not in names and not (kind == "estimator" and name == "auto"):
        raise CliError(f"unknown {kind} {name!r}; available: {', '.join(names)}")


def estimate_table(model: Any, space: Any, calib: Any, args: argparse.Namespace) -> Any:
    """The sensitivity table for ``args.estimator``, cached unless ``--no-cache``."""
    from ..models import cache_dir
    from ..search.api import estimate

    return estimate(
        model,
        space,
        calib,
        args.estimator,
        cache_dir=None if args.no_cache else cache_dir(),
        callback=progress(args.estimator, args.quiet),
    )


def read_text(path: str, flag: str) -> str:
    """The UTF-8 text of ``path``, or a CliError naming ``flag``."""
    from pathlib import Path

    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot read {flag} {path!r}: {e.strerror}") from None


def cache_dir() -> Any:
    from ..models import cache_dir as _cache_dir

    return _cache_dir()


def check_output(path: str, flag: str) -> None:
    """Refuse an output path that cannot be written, before any work starts (missing folders
    are fine when they can be created)."""
    import os
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        raise CliError(f"{flag} {path!r} is a directory; give a file path")
    if target.exists() and not os.access(target, os.W_OK):
        raise CliError(f"{flag} {path!r} is not writable")
    _check_creatable(target.absolute().parent, path, flag)


def check_output_dir(path: str, flag: str) -> None:
    """Refuse an output folder that cannot be written (or created), before any work starts."""
    import os
    from pathlib import Path

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise CliError(f"{flag} {path!r} is a file; give a folder")
    if target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            raise CliError(f"{flag} {path!r} is not writable")
        return
    _check_creatable(target.absolute().parent, path, flag)


def _check_creatable(parent: Any, path: str, flag: str) -> None:
    import os

    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"{flag} {path!r}: cannot create files under {str(parent)!r}")


def plan_calibration(tok: Any, sol: Any, backend: Any, args: argparse.Namespace) -> Any:
    """The calibration a plan was searched with (rebuilt from ``meta["calibration"]``), so
    that its backend builds the same weights; without a record, ``args.n_samples`` windows
    when the backend needs calibration (gptq), else ``None``."""
    from ..data import calibration
    from ..data.tokens import calibration_from_record

    record = sol.meta.get("calibration")
    if isinstance(record, dict):
        try:
            return calibration_from_record(tok, record)
        except ValueError as e:
            raise CliError(str(e)) from None
    name = backend if isinstance(backend, str) else getattr(type(backend), "name", "")
    if name in ("gptq",) or getattr(backend, "quantizer", "") == "gptq":
        return calibration(tok, args.n_samples, args.seq_len)
    return None


def feasible_plan(path: str) -> Any:
    """The plan at ``path``; a :class:`CliError` when it has no formats (infeasible)."""
    from ..search.solution import Solution

    sol = Solution.load(path)
    if not sol.success:
        raise CliError(f"plan {path!r} has status {sol.status.value}: {sol.message}")
    return sol


def refuse_violations(command: str, target: str, bad: Sequence[Any], search_target: str) -> int:
    """Print every rule the plan breaks (``bitalloc COMMAND``) with the way out, to stderr;
    the exit code for bad input."""
    print(f"bitalloc {command}: the plan breaks {len(bad)} rule(s) of {target}:", file=sys.stderr)
    for v in bad:
        print(f"  {v}", file=sys.stderr)
    print(f"search with --target {search_target}, or `bitalloc export --fix`", file=sys.stderr)
    return EXIT_BAD_INPUT
