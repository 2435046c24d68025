"""The ``bitalloc`` command: search, eval, show, validate, frontier, export, pack, list, study.

Exit codes: 0 success, 1 runtime failure, 2 bad input (unknown names, bad budget, malformed
plan, infeasible budget). Nothing is written unless the command succeeds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ._common import EXIT_BAD_INPUT, CliError
from .frontier import parse_budgets


def build_parser() -> argparse.ArgumentParser:
    """The ``bitalloc`` argument parser; each module registers its commands."""
    from ..studies.cli import register as register_studies  # optuna loads only when run
    from . import checkpoint, export, frontier, gguf, pack, plan, validate

    p = argparse.ArgumentParser(prog="bitalloc", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"bitalloc {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (plan, validate, frontier, export, pack, gguf, checkpoint):
        module.register(sub)
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
    except OSError as e:  # a path that went bad after the checks (or none could check)
        where = f" {e.filename!r}" if e.filename else ""
        print(f"bitalloc {args.command}: error:{where} {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        from ..toolkits.llamacpp import ToolFailed, ToolkitMissing

        if isinstance(e, ToolkitMissing):
            print(f"bitalloc {args.command}: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if isinstance(e, ToolFailed):  # the tool's last lines follow the message
            print(f"bitalloc {args.command}: error: {e}", file=sys.stderr)
            return 1
        damaged = _storage_error(e)
        if damaged is None:
            raise
        print(f"bitalloc {args.command}: error: {damaged}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _storage_error(e: Exception) -> str | None:
    """One line for a study database that fails after it opened (a damaged SQLite file,
    a dropped PostgreSQL connection), else ``None``. SQLAlchemy is only looked up when a
    study command has loaded it."""
    kinds = tuple(
        getattr(sys.modules.get(module), name, None) or ()
        for module, name in (
            ("optuna.exceptions", "StorageInternalError"),
            ("sqlalchemy.exc", "SQLAlchemyError"),
        )
    )
    if not isinstance(e, kinds):
        return None
    if isinstance(e.__cause__, Exception):  # Optuna wraps the database's error
        e = e.__cause__
    orig = getattr(e, "orig", None) or e
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    return f"the study storage cannot be read ({type(orig).__name__}: {first})"


__all__ = ["EXIT_BAD_INPUT", "CliError", "build_parser", "main", "parse_budgets"]
