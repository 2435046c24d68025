"""Facades: ``estimate``, ``solve``, ``apply``, ``search`` and ``available``.

The only module in ``search/`` that reaches into the other folders; it does so inside the
functions so ``import bitalloc`` stays light.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..defaults import DEFAULT_ESTIMATOR
from .budget import Budget
from .calibration import Calibration, as_calibration
from .solution import Solution
from .space import SearchSpace
from .table import SensitivityTable

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

    from ..backends.base import AppliedPlan, Backend
    from ..backends.export.base import Exporter
    from ..sensitivity.base import Estimator, Progress
    from ..solvers.base import Evaluator, Solver
    from .frontier import Frontier

    EvaluateFn = Evaluator | Callable[..., float]

log = logging.getLogger(__name__)
# "auto": fisher for causal LMs with a calibration loss (its plans measured best per second of
# estimation on SmolLM2, benchmarks/RESULTS.md), weight_error otherwise (data-free).
KINDS = ("estimator", "solver", "backend", "exporter")


def available(kind: str) -> tuple[str, ...]:
    """Registered names for ``kind``, one of :data:`KINDS`."""
    return _registry(kind).names()


def _registry(kind: str) -> Any:
    if kind == "estimator":
        from ..sensitivity import ESTIMATORS

        return ESTIMATORS
    if kind == "solver":
        from ..solvers import SOLVERS

        return SOLVERS
    if kind == "backend":
        from ..backends import BACKENDS

        return BACKENDS
    if kind == "exporter":
        from ..backends.export import EXPORTERS

        return EXPORTERS
    raise ValueError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def estimate(
    model: nn.Module,
    space: SearchSpace,
    calib: Calibration | Sequence[Any] | None = None,
    method: str | Estimator = DEFAULT_ESTIMATOR,
    *,
    backend: str | Backend = "rtn",
    cache_dir: str | os.PathLike[str] | None = None,
    callback: Progress | None = None,
    **options: Any,
) -> SensitivityTable:
    """Score every (unit, format) pair of ``space`` with an estimator.

    Every entry prices the ``W_hat`` that ``backend`` builds for that unit and format (the
    rtn backend searches its grid when ``calib`` is given), so apply the plan with the same
    backend and calibration.

    Args:
        model: the network whose units ``space`` names.
        space: the search space.
        calib: calibration batches (required by data-aware estimators).
        method: a registered estimator name (``bitalloc.available("estimator")``), an
            instance, or ``"auto"`` (default): ``fisher`` for a causal LM whose calibration
            has a loss, else the data-free ``weight_error`` (see :func:`auto_estimator`).
        cache_dir: when given, tables are cached there keyed by estimator options, model,
            calibration and space fingerprints; a second call loads instead of recomputing.
        callback: ``callback(done, total, description)`` progress reports.
        backend: a registered backend name (``bitalloc.available("backend")``) or instance.
        **options: estimator options (its dataclass fields) when ``method`` is a name.

    Example:
        >>> table = bitalloc.estimate(model, space, calib, method="layer_error")
    """
    if not isinstance(space, SearchSpace):
        raise TypeError(f"`space` must be a SearchSpace, got {type(space).__name__}")
    cal = as_calibration(calib) if calib is not None else None
    if method == "auto":
        method = auto_estimator(model, cal)
    est = _registry("estimator").resolve(method, **options)
    be = _registry("backend").resolve(backend)
    if cal is None and type(est).needs_calibration:
        raise ValueError(f"estimator {type(est).name!r} needs `calib` (calibration batches)")
    from ..nn.checks import check_finite_weights

    check_finite_weights(model, [u.fqn for u in space.units], "no estimator can score them")
    provenance = _provenance(model, cal)
    path = None
    if cache_dir is not None:
        key = _cache_key(est, be, space, provenance)
        path = Path(cache_dir) / "tables" / f"{type(est).name}-{key}.npz"
        if path.exists():
            cached = _cached_table(path, type(est).name, space, provenance)
            if cached is not None:
                log.info("sensitivity table cache hit: %s", path)
                return cached
    started = time.perf_counter()
    table = est.estimate(model, space, cal, backend=be, callback=callback)
    meta = {**table.meta, **provenance, "estimate_time_s": round(time.perf_counter() - started, 3)}
    table = SensitivityTable(
        space=table.space, values=table.values, estimator=table.estimator, meta=meta
    )
    if path is not None:
        table.save(path)
    return table


def _cached_table(
    path: Path, estimator: str, space: SearchSpace, provenance: dict[str, Any]
) -> SensitivityTable | None:
    """The table cached at ``path`` when it loads and is for this estimator, search space,
    model and calibration; ``None`` (with a warning; it is then recomputed and replaced) when
    the file is broken or belongs to something else."""
    try:
        table = SensitivityTable.load(path)
    except ValueError as e:
        log.warning("sensitivity table cache entry is broken, recomputing it: %s", e)
        return None
    meta = table.meta
    checks = {
        "estimator": (table.estimator, estimator),
        "search space": (table.space.fingerprint(), space.fingerprint()),
        "model": (meta.get("model_fingerprint"), provenance["model_fingerprint"]),
        "calibration": (
            (meta.get("calibration") or {}).get("fingerprint"),
            (provenance.get("calibration") or {}).get("fingerprint"),
        ),
    }
    wrong = [what for what, (have, want) in checks.items() if have != want]
    if wrong:
        log.warning(
            "sensitivity table cache entry %s is for another %s; recomputing it",
            path,
            " and ".join(wrong),
        )
        return None
    return table


def auto_estimator(model: Any, calib: Calibration | None) -> str:
    """``"fisher"`` for a causal LM with calibration data and a loss, else ``"weight_error"``."""
    from ..models import task

    try:
        causal = task(model) == "causal_lm"
    except ValueError:
        causal = False
    return "fisher" if causal and calib is not None and calib.loss is not None else "weight_error"


def _provenance(model: Any, calib: Calibration | None) -> dict[str, Any]:
    from .. import __version__
    from ..models import fingerprint

    meta: dict[str, Any] = {
        "bitalloc_version": __version__,
        "model": getattr(model, "bitalloc_name", type(model).__name__),
        "model_fingerprint": fingerprint(model),
    }
    if calib is not None:
        meta["calibration"] = {
            "name": calib.name,
            "batches": len(calib),
            "fingerprint": calib.fingerprint(),
        }
    return meta


def _cache_key(est: Any, backend: Any, space: SearchSpace, provenance: dict[str, Any]) -> str:
    import dataclasses

    from ..backends.quantizer import describe

    blob = json.dumps(
        {
            "estimator": type(est).name,
            "options": dataclasses.asdict(est),
            "backend": describe(backend),
            "space": space.fingerprint(),
            "model": provenance["model_fingerprint"],
            "calib": provenance.get("calibration"),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def solve(
    table: SensitivityTable,
    budget: Budget | float,
    solver: str | Solver = "ilp",
    *,
    evaluate: EvaluateFn | None = None,
    **options: Any,
) -> Solution:
    """Pick one format per unit minimising the table's summed loss under ``budget``.

    ``budget`` is a :class:`Budget` or a float meaning average bits. An infeasible budget gives
    a Solution with status INFEASIBLE and the minimum achievable budget in its message.
    ``evaluate`` (an :class:`~bitalloc.solvers.base.Evaluator`, e.g. measured KL) is passed to
    black-box solvers (``bitalloc.solvers.solvers_with("black_box")``); without it they
    optimise the table's predicted loss.

    Example:
        >>> sol = bitalloc.solve(table, Budget.avg_bits(3.0), solver="ilp")
    """
    if not isinstance(table, SensitivityTable):
        raise TypeError(f"`table` must be a SensitivityTable, got {type(table).__name__}")
    impl = _registry("solver").resolve(solver, **options)
    if evaluate is None:
        return impl.solve(table, as_budget(budget))
    if not type(impl).black_box:
        from ..solvers import solvers_with

        raise ValueError(
            f"solver {type(impl).name!r} optimises the table only and takes no `evaluate`; "
            f"black-box solvers: {', '.join(solvers_with('black_box'))}"
        )
    return impl.solve(table, as_budget(budget), evaluate=evaluate)


def frontier(
    table: SensitivityTable,
    budgets: Sequence[Budget | float] | None = None,
    solver: str | Solver = "ilp",
    *,
    evaluate: EvaluateFn | None = None,
    **options: Any,
) -> Frontier:
    """Solve ``table`` at every budget (a float = average bits): one plan per budget.

    Infeasible budgets stay in the result as INFEASIBLE points with their message.
    ``budgets=None`` asks a solver with its own Pareto search (``nsga2``) for its front.
    Measure the points afterwards with :meth:`Frontier.evaluate`.

    Example:
        >>> front = bitalloc.frontier(table, [2.5, 3.0, 3.5, 4.0], solver="ilp")
        >>> front.pareto().plot("pareto.png")
    """
    from .frontier import Frontier

    if not isinstance(table, SensitivityTable):
        raise TypeError(f"`table` must be a SensitivityTable, got {type(table).__name__}")
    impl = _registry("solver").resolve(solver, **options)
    name = type(impl).name
    if budgets is None:
        if not hasattr(impl, "frontier"):
            raise ValueError(
                f"`budgets` is required for solver {name!r} (only solvers with a Pareto "
                "search, e.g. 'nsga2', make a frontier without budgets)"
            )
        return impl.frontier(table, evaluate=evaluate) if evaluate else impl.frontier(table)
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence) or not budgets:
        raise ValueError(f"`budgets` must be a non-empty sequence of budgets, got {budgets!r}")
    checked = [as_budget(b) for b in budgets]
    points = tuple(solve(table, b, impl, evaluate=evaluate) for b in checked)
    return Frontier(points, meta={"solver": name, "budgets": [b.to_dict() for b in checked]})


def as_budget(budget: Budget | float) -> Budget:
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        return Budget.avg_bits(float(budget))
    raise TypeError(f"`budget` must be a Budget or a number of average bits, got {budget!r}")


def apply(
    model: nn.Module,
    solution: Solution,
    backend: str | Backend | None = None,
    *,
    calib: Calibration | Sequence[Any] | None = None,
    **options: Any,
) -> AppliedPlan:
    """Quantize ``model`` in place per ``solution``; the handle's ``restore()`` undoes it.

    ``backend=None`` uses the backend the plan was priced with (``solution.meta["backend"]``,
    see :func:`plan_backend`), else ``"rtn"``. Give the same ``calib`` as the search: the rtn
    backend searches its grid on it, and falls back to minmax without it.
    """
    be = plan_backend(solution) if backend is None else backend
    be = _registry("backend").resolve(be, **options)
    return be.apply(model, solution, calib=as_calibration(calib) if calib is not None else None)


def plan_backend(solution: Solution) -> Any:
    """The backend instance recorded in ``solution.meta["backend"]`` (name and options), or
    the default rtn backend for a plan that records none."""
    rec = solution.meta.get("backend")
    if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
        return _registry("backend").get("rtn")
    opts = rec.get("options") or {}
    if not isinstance(opts, dict):
        raise ValueError(f"plan meta.backend.options must be an object, got {opts!r}")
    opts = {k: v for k, v in opts.items() if k != "keep_codes"}
    return _registry("backend").get(rec["name"], **opts)


def export(
    solution: Solution,
    target: str | Exporter,
    path: str | os.PathLike[str] | None = None,
    *,
    fix: bool = False,
    **options: Any,
) -> str | dict[str, Any]:
    """Render ``solution`` as ``target``'s per-layer config and optionally write it to ``path``.

    ``target`` is a registered exporter (``bitalloc.available("exporter")``) or an instance;
    ``options`` are its fields (e.g. ``runtime="transformers"``). The plan is checked against
    the target's runtime rules first: violations raise
    :class:`~bitalloc.backends.export.ExportViolations` (a ValueError listing each) unless
    ``fix=True`` raises the offending units to the cheapest supported format that never lowers
    their bits. The file is written atomically.

    Example:
        >>> bitalloc.export(sol, "compressed-tensors", "quant_config.json", fix=True)
    """
    from ..backends.export import ExportViolations
    from ._io import atomic_write_text

    exp = _registry("exporter").resolve(target, **options)
    if fix:
        solution = exp.fix(solution)
    bad = exp.check(solution)
    if bad:
        raise ExportViolations(type(exp).name, bad)
    rendered = exp.render(solution)
    if path is not None:
        atomic_write_text(path, exp.serialize(rendered))
    return rendered
