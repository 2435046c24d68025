"""Black-box search with Optuna: one categorical parameter per tie group / unit."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.choices import Choice
from ..search.params import param_name
from ..search.problem import Problem
from ..search.solution import Solution, Status
from ..search.table import SensitivityTable
from . import SOLVERS
from ._fitness import Fitness
from ._mckp import feasible_start, repair_batch, row_scales
from .base import (
    SolverBase,
    check_int_options,
    infeasible,
    joint_message,
    make_solution,
    provenance,
    start,
)

if TYPE_CHECKING:
    import optuna

SAMPLERS = ("tpe", "nsga2")  # the solver's; studies also take "random"


class Sampler(Choice):
    """The Optuna samplers bitalloc builds (:func:`make_sampler`)."""

    TPE = "tpe"
    NSGA2 = "nsga2"
    RANDOM = "random"


def make_sampler(
    name: str, seed: int | None, population_size: int | None = None
) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler ``name`` (a :class:`Sampler` value); ``population_size``
    sets NSGA-II's generation size (Optuna's default when ``None``)."""
    import optuna

    kind = Sampler.parse(name, "sampler")
    if kind is Sampler.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    if kind is Sampler.NSGA2:
        if population_size is None:
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    return optuna.samplers.TPESampler(seed=seed)


PLAN_ATTR = "bitalloc_plan"  # trial user attr: the (repaired) plan, one format key per group
STUDY_ATTR = "bitalloc"  # study user attr: what the study optimises (checked on resume)


@SOLVERS.register("optuna")
@dataclass(frozen=True)
class OptunaSolver(SolverBase):
    """Optuna study over the plan: one categorical parameter per group (a free unit, named by
    its FQN, or a tie group, named by its label), choices = the group's allowed format keys.

    Objective: ``evaluate(plan)`` when given (e.g. measured KL, a black-box fitness as in
    EvoPress, Sieberling et al., ICML 2025), else the table's predicted summed loss
    ``sum_g v[g, j_g]``. Samplers: TPE (Bergstra et al., "Algorithms for Hyper-Parameter
    Optimization", NeurIPS 2011; Watanabe, arXiv 2304.11127) or NSGA-II (Deb et al., IEEE TEVC
    6(2), 2002), both seeded. Budget rows enter as constraints ``(C_r - B_r) / s_r <= 0``
    through ``trial.set_constraint`` (the Optuna 5 replacement of ``constraints_func``) so the
    sampler learns the feasible region, and every sample over budget is also repaired (the
    group of least predicted-loss increase per bit of overshoot is lowered until it fits,
    :func:`~bitalloc.solvers._mckp.repair_batch`) before it is scored, so every scored plan
    fits and the returned best is feasible. The ``warm_start`` solver's plan (default the exact
    ``ilp``) is enqueued as trial 0 (``study.enqueue_trial``): without ``evaluate`` the result
    is never worse than it.

    Args:
        sampler: ``"tpe"`` or ``"nsga2"``.
        n_trials: trials to run in this call (a resumed study adds this many).
        timeout_s: wall-clock limit of the optimisation (None = none; results then depend on
            machine speed).
        seed: sampler seed.
        population_size: NSGA-II population (sampler ``"nsga2"`` only).
        warm_start: registered solver whose plan is enqueued first, or None.
        storage: None (in memory), an RDB URL (``"sqlite:///study.db"``,
            ``"postgresql://..."``) or a journal file path (``JournalFileBackend``).
        study_name: study to create or, with ``load_if_exists``, resume; a resumed study must
            have been created for the same table, budget and kind of objective.
        load_if_exists: continue an existing study of that name instead of failing.

    ``meta`` records ``n_trials`` (in the study), ``n_new_trials``, ``best_trial``,
    ``storage``, ``study_name``, ``n_evaluations`` and ``measured`` (the best plan's evaluated
    loss, with ``evaluate``).

    Example:
        >>> sol = OptunaSolver(n_trials=200).solve(table, Budget.avg_bits(3.0), evaluate=kl)
    """

    sampler: str = "tpe"
    n_trials: int = 100
    timeout_s: float | None = None
    seed: int = 0
    population_size: int = 50
    warm_start: str | None = "ilp"
    storage: str | None = None
    study_name: str | None = None
    load_if_exists: bool = False

    name: ClassVar[str]
    black_box: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {SAMPLERS}, got {self.sampler!r}")
        check_int_options(self, (("n_trials", 1), ("population_size", 2)))
        t = self.timeout_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0):
            raise ValueError(f"`timeout_s` must be a positive number or None, got {t!r}")
        check_int_options(self, (("seed", None),))
        if self.warm_start is not None:
            cls = SOLVERS.cls(self.warm_start)
            if cls.black_box:
                raise ValueError(
                    f"`warm_start` must name a table solver (e.g. 'ilp', 'greedy'), got "
                    f"the black-box solver {self.warm_start!r}"
                )
        for arg in ("storage", "study_name"):
            if getattr(self, arg) is not None and not isinstance(getattr(self, arg), str):
                raise TypeError(f"`{arg}` must be a string or None")

    def solve(
        self,
        table: SensitivityTable,
        budget: Budget,
        evaluate: Callable[..., float] | None = None,
    ) -> Solution:
        """Best plan found within ``budget`` (INFEASIBLE when no plan meets every row)."""
        problem, started, early = start(self, table, budget)
        if early is not None:
            return early
        fitness = Fitness(problem, table, evaluate)
        names, options = _parameters(problem, table)
        study = self._study(table, budget, evaluate is not None)
        n_before = len(study.trials)
        if n_before == 0 and self.warm_start is not None:
            first = SOLVERS.get(self.warm_start).solve(table, budget)
            if first.success:
                study.enqueue_trial(dict(zip(names, _group_keys(problem, first))))
        objective = _objective(problem, table, fitness, names, options)
        with _quiet_optuna():
            study.optimize(objective, n_trials=self.n_trials, timeout=self.timeout_s)
        meta = provenance(self, table, budget, started)
        meta.update(
            n_trials=len(study.trials),
            n_new_trials=len(study.trials) - n_before,
            storage=_describe_storage(self.storage),
            study_name=study.study_name,
            n_evaluations=fitness.n_evaluations,
        )
        best = _best_trial(study)
        if best is None:
            return infeasible(problem, table, budget, meta, joint_message(problem))
        trial, keys = best
        col = {k: j for j, k in enumerate(table.space.keys)}
        choice = np.array([col[k] for k in keys], dtype=np.int64)
        meta.update(best_trial=trial.number)
        if evaluate is not None:
            meta.update(measured=float(trial.value))
        return make_solution(problem, table, budget, choice, Status.FEASIBLE, meta)

    def _study(self, table: SensitivityTable, budget: Budget, measured: bool) -> Any:
        """Create (or resume) the study; a resumed one must optimise the same problem."""
        import optuna

        sampler = make_sampler(self.sampler, self.seed, self.population_size)
        tag = {
            "space": table.space.fingerprint(),
            "table": hashlib.sha256(np.ascontiguousarray(table.values).tobytes()).hexdigest()[:16],
            "budget": budget.to_dict(),
            "objective": "evaluate" if measured else "predicted",
        }
        try:
            with _quiet_optuna():
                study = optuna.create_study(
                    storage=_storage(self.storage),
                    sampler=sampler,
                    study_name=self.study_name,
                    direction="minimize",
                    load_if_exists=self.load_if_exists,
                )
        except optuna.exceptions.DuplicatedStudyError:
            raise ValueError(
                f"study {self.study_name!r} already exists in `storage` {self.storage!r}; pass "
                "load_if_exists=True to resume it, or another `study_name`"
            ) from None
        old = study.user_attrs.get(STUDY_ATTR)
        if old is None:
            study.set_user_attr(STUDY_ATTR, tag)
        elif old != tag:
            changed = sorted(k for k in tag if old.get(k) != tag[k])
            raise ValueError(
                f"study {study.study_name!r} in `storage` {self.storage!r} was created for a "
                f"different {', '.join(changed)}; pass another `study_name` to start afresh"
            )
        return study


def _parameters(problem: Problem, table: SensitivityTable) -> tuple[list[str], list[list[str]]]:
    """Per group the parameter name (:func:`bitalloc.search.params.param_name`) and its
    allowed format keys."""
    space = table.space
    names = [param_name(space.units[members[0]]) for members in problem.members]
    options = [[space.keys[j] for j in np.flatnonzero(row)] for row in problem.allowed]
    return names, options


def _group_keys(problem: Problem, sol: Solution) -> list[str]:
    """Per group the format key ``sol`` gives its units."""
    return [sol.choice[members[0]] for members in problem.members]


def _objective(
    problem: Problem,
    table: SensitivityTable,
    fitness: Fitness,
    names: list[str],
    options: list[list[str]],
) -> Callable[[Any], float]:
    """The trial function: sample, report the budget constraints, repair, score."""
    col = {k: j for j, k in enumerate(table.space.keys)}
    scale = row_scales(problem)
    caps = problem.row_caps()
    row_names = ("memory", *problem.extra_names)
    keys = table.space.keys
    fallback = feasible_start(problem)

    def objective(trial: Any) -> float:
        picked = [trial.suggest_categorical(n, opts) for n, opts in zip(names, options)]
        choice = np.array([col[k] for k in picked], dtype=np.int64)
        rows = np.arange(problem.n_groups)
        totals = problem.row_costs()[:, rows, choice].sum(axis=1)
        for name, over, s in zip(row_names, totals - caps, scale):
            trial.set_constraint(name, float(over / s))
        fixed, ok = repair_batch(problem, choice[None])
        plan = fixed[0] if ok[0] else fallback
        if plan is None:
            return math.inf  # stuck repair and no fallback: scored as the worst
        trial.set_user_attr(PLAN_ATTR, [keys[j] for j in plan])
        return fitness(plan)

    return objective


def _best_trial(study: Any) -> tuple[Any, list[str]] | None:
    """The complete trial with a stored plan and the least finite value (earliest on ties)."""
    import optuna

    best = None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        plan = t.user_attrs.get(PLAN_ATTR)
        if plan is None or t.value is None or not math.isfinite(t.value):
            continue
        if best is None or t.value < best[0].value:
            best = (t, list(plan))
    return best


def _storage(storage: str | None) -> Any:
    """None, an RDB URL (contains ``://``), or a journal file path."""
    if storage is None or "://" in storage:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(os.path.expanduser(storage))
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _describe_storage(storage: str | None) -> str:
    if storage is None:
        return "memory"
    return storage if "://" in storage else f"journal:{storage}"


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO; keep it at WARNING while solving, then restore."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(level, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
