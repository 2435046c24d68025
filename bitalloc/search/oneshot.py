"""The one-shot facade ``bitalloc.search(model, calib, budget)``: the measured-best pipeline.

Defaults (chosen by measurement on SmolLM2-135M, benchmarks/RESULTS.md "Anchors"):

- formats :data:`DEFAULT_FORMATS`;
- backend ``"auto"``: ``gptq`` (GPTQ on the activation-weighted grid) when calibration is given
  and every unit is an ``nn.Linear``, else ``rtn`` (clip-searched grid with calibration,
  minmax without); the table prices that backend's ``W_hat``;
- estimator ``"auto"`` (fisher for causal LMs with a loss, else weight_error);
- solver ``None``: the exact optimum of the table, refined by measured correction and
  EvoPress (:func:`bitalloc.search.pipeline.refine`) for causal LMs with calibration data;
  plain ``ilp`` otherwise. Naming a solver runs that solver alone on the table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..defaults import DEFAULT_FORMATS
from .budget import Budget
from .calibration import Calibration, as_calibration
from .choices import Choice
from .formats import QuantFormat
from .solution import Solution, Status
from .space import SearchSpace
from .table import SensitivityTable

if TYPE_CHECKING:
    from torch import nn

    from ..backends.base import Backend
    from ..sensitivity.base import Estimator, Progress
    from ..solvers.base import Solver


class FitnessSource(Choice):
    """What a black-box solver optimises: measured KL, the table, or the solver's preference."""

    AUTO = "auto"
    KL = "kl"
    TABLE = "table"


FITNESS = FitnessSource.values()


def default_backend(model: nn.Module, space: SearchSpace, calib: Calibration | None) -> str:
    """``"gptq"`` with calibration when every unit is an ``nn.Linear``, else ``"rtn"``."""
    from torch import nn as tnn

    if calib is None:
        return "rtn"
    modules = dict(model.named_modules())
    return (
        "gptq" if all(isinstance(modules.get(u.fqn), tnn.Linear) for u in space.units) else "rtn"
    )


def search(*args: Any, **kwargs: Any) -> Solution:
    """One shot: discover the space, price it with the backend, solve and refine.

    Same arguments as :func:`search_with_table`; returns only the plan.

    Example:
        >>> sol = bitalloc.search(model, calib, 3.0)            # the measured-best pipeline
        >>> sol = bitalloc.search(model, calib, 3.0, solver="ilp", backend="rtn")
    """
    return search_with_table(*args, **kwargs)[1]


def search_with_table(
    model: nn.Module,
    calib: Calibration | Sequence[Any] | None,
    budget: Budget | float,
    *,
    formats: Sequence[str | QuantFormat] | None = None,
    target: str | None = None,
    estimator: str | Estimator = "auto",
    solver: str | Solver | None = None,
    backend: str | Backend = "auto",
    effort: str = "default",
    time_limit: float | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] | None = None,
    tie: Sequence[str] | str | None = "auto",
    channel_group: int | None = None,
    lm_head: bool = False,
    embeddings: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    callback: Progress | None = None,
    fitness: str = "auto",
    seed: int = 0,
) -> tuple[SensitivityTable, Solution]:
    """The table and the plan of :func:`search`.

    Args:
        model, calib, budget: the network, its calibration batches (``None``: data-free) and
            the budget (a :class:`Budget` or average bits).
        formats: the menu of formats every unit may take (where its shape allows); ``None``
            = :data:`DEFAULT_FORMATS`, or the target's menu.
        target: ``"llama.cpp"`` or ``"compressed-tensors"``: offer only what that runtime
            stores (:mod:`bitalloc.search.targets`) and build it with the target's backend
            (``ggml``: llama.cpp's own quantizer) unless ``backend`` names one.
        estimator: a registered estimator, or ``"auto"``.
        solver: ``None`` for the default pipeline (module doc), or a registered solver name
            or instance to run alone on the table.
        backend: ``"auto"``, or a registered backend name or instance; the plan records it
            and ``bitalloc.apply`` uses it by default.
        effort: ``"fast"``, ``"default"`` or ``"max"``: how much the pipeline measures
            (:data:`bitalloc.search.pipeline.SCHEDULES`).
        time_limit: seconds for the whole call; the table and its exact optimum always
            complete, later stages stop when it expires (status LIMIT, best plan so far).
        include, exclude, tie, channel_group, lm_head, embeddings: the search space
            (:meth:`SearchSpace.from_model`; ``lm_head=True`` searches the output projection,
            and with it a tied token embedding; ``embeddings=True`` an untied one).
        cache_dir: cache the sensitivity table there.
        fitness: with a black-box ``solver``: ``"kl"``, ``"table"`` or ``"auto"`` (see
            :func:`solve_with_fitness`).
        seed: seed of every random step.
    """
    from ..backends.quantizer import Prepared
    from .api import _registry, estimate, solve
    from .pipeline import _check_limit, _effort, refine

    started = time.perf_counter()
    _check_limit(time_limit)
    effort = _effort(effort).value
    cal = as_calibration(calib) if calib is not None else None
    example = cal.batches[0] if cal is not None else None
    if formats is None and target is None:
        formats = DEFAULT_FORMATS
    space = SearchSpace.from_model(
        model,
        formats,
        include=include,
        exclude=exclude,
        tie=tie,
        channel_group=channel_group,
        example_input=example,
        target=target,
        lm_head=lm_head,
        embeddings=embeddings,
    )
    if backend == "auto":
        if target is not None:
            from .targets import get_target

            backend = get_target(target).backend
        else:
            backend = default_backend(model, space, cal)
    resolved = _registry("backend").resolve(backend)
    space = space.for_backend(resolved)
    be = Prepared(resolved, model, space, cal)
    table = estimate(
        model, space, cal, estimator, backend=be, cache_dir=cache_dir, callback=callback
    )
    if solver is not None:
        impl = _registry("solver").resolve(solver)
        return table, solve_with_fitness(model, cal, table, budget, impl, fitness, backend=be)
    from .api import as_budget

    budget = as_budget(budget)
    if cal is None or not _causal(model):
        return table, solve(table, budget, "ilp")
    left = None if time_limit is None else max(time_limit - (time.perf_counter() - started), 0.0)
    return table, refine(
        model,
        cal,
        table,
        budget,
        backend=be,
        effort=effort,
        time_limit=left,
        seed=seed,
        callback=callback,
    )


def _causal(model: Any) -> bool:
    from ..models import task

    try:
        return task(model) == "causal_lm"
    except ValueError:
        return False


def solve_with_fitness(
    model: nn.Module,
    calib: Calibration | None,
    table: SensitivityTable,
    budget: Budget | float,
    solver: Any,
    fitness: str = "auto",
    *,
    backend: Any = "rtn",
) -> Solution:
    """Solve with the table, or with the measured KL for a black-box solver; the KL is
    measured on ``backend``'s variants.

    ``fitness``: ``"kl"`` optimises the measured KL to the reference on the calibration
    tokens (:class:`~bitalloc.backends.kl_evaluator.KLEvaluator`), ``"table"`` the table's
    predicted loss; ``"auto"`` is ``"kl"`` for solvers built for an expensive fitness
    (``evopress``: multi-step selection on growing token counts) when ``calib`` is given,
    else ``"table"`` (``optuna``/``nsga2`` defaults run hundreds of candidates: pass
    ``fitness="kl"`` with a CPU-sized schedule).
    """
    from .api import solve

    fitness = FitnessSource.parse(fitness, "fitness")
    from ..solvers import solvers_with

    black = type(solver).black_box
    if fitness == "kl" and (not black or calib is None):
        raise ValueError(
            f"fitness='kl' needs a black-box solver ({', '.join(solvers_with('black_box'))}) "
            "and `calib`; "
            f"got solver {type(solver).name!r}"
            + ("" if calib is not None else " without calibration data")
        )
    auto = black and calib is not None and type(solver).prefers_measured
    if fitness == "table" or (fitness == "auto" and not auto):
        return solve(table, budget, solver)
    from ..backends.kl_evaluator import KLEvaluator

    with KLEvaluator(model, calib, table.space, backend) as kl:
        return solve(table, budget, solver, evaluate=kl)


__all__ = [
    "DEFAULT_FORMATS",
    "FITNESS",
    "Status",
    "search",
    "search_with_table",
    "solve_with_fitness",
]
