"""Ready-made studies: budget sweep, estimator comparison, solver comparison.

Each is a :class:`StudyConfig` of ``kind="sweep"``; :func:`~bitalloc.studies.create_study`
queues its whole grid as fixed trials (params ``budget``, ``estimator``, ``solver``), so
workers only pull points, and the finished study holds one measured plan per point:

- budget sweep: one estimator and solver over a range of average-bits budgets; the completed
  trials trace the bits vs perplexity Pareto front of that pipeline;
- estimator comparison: several estimators x budgets with one solver (which sensitivity
  table gives the best measured plans);
- solver comparison: several solvers x budgets on one estimator's table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .study import StudyConfig

DEFAULT_BUDGETS = (2.5, 3.0, 3.5, 4.0, 5.0)


def budget_sweep(
    model: str,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    *,
    estimator: str = "auto",
    solver: str = "ilp",
    **options: Any,
) -> StudyConfig:
    """One (estimator, solver) pipeline over ``budgets`` (average bits)."""
    return _sweep(model, budgets, (estimator,), (solver,), options)


def estimator_comparison(
    model: str,
    estimators: Sequence[str],
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    *,
    solver: str = "ilp",
    **options: Any,
) -> StudyConfig:
    """``estimators`` x ``budgets`` with one solver."""
    return _sweep(model, budgets, _names(estimators, "estimators"), (solver,), options)


def solver_comparison(
    model: str,
    solvers: Sequence[str],
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    *,
    estimator: str = "auto",
    **options: Any,
) -> StudyConfig:
    """``solvers`` x ``budgets`` on one estimator's table."""
    return _sweep(model, budgets, (estimator,), _names(solvers, "solvers"), options)


def _sweep(
    model: str,
    budgets: Sequence[float],
    estimators: Sequence[str],
    solvers: Sequence[str],
    options: dict[str, Any],
) -> StudyConfig:
    """The ``kind="sweep"`` config over the grid ``budgets`` x ``estimators`` x ``solvers``."""
    return StudyConfig(
        model=model,
        kind="sweep",
        budgets=tuple(budgets),
        estimators=tuple(estimators),
        solvers=tuple(solvers),
        **options,
    )


PRESETS = {
    "budget-sweep": budget_sweep,
    "estimator-comparison": estimator_comparison,
    "solver-comparison": solver_comparison,
}


def series_axis(config: StudyConfig) -> str | None:
    """The sweep axis besides the budget that varies (``estimator`` / ``solver``), if any."""
    if config.kind != "sweep":
        return None
    if len(config.estimators) > 1:
        return "estimator"
    if len(config.solvers) > 1:
        return "solver"
    return None


def check_names(config: StudyConfig) -> None:
    """Every estimator and solver of ``config`` is registered (ValueError naming the bad one)."""
    from ..search.api import available

    for kind, names in (("estimator", config.estimators), ("solver", config.solvers)):
        known = set(available(kind)) | ({"auto"} if kind == "estimator" else set())
        for name in names:
            if name not in known:
                raise ValueError(f"unknown {kind} {name!r}; available: {', '.join(sorted(known))}")


def _names(names: Sequence[str], argument: str) -> list[str]:
    out = [names] if isinstance(names, str) else list(names)
    if len(out) < 2 or len(set(out)) != len(out):
        raise ValueError(f"`{argument}` must list at least two distinct names, got {names!r}")
    return out
