"""Study creation and loading, and the trial <-> plan encoding.

A study has two objectives, both minimised: the plan's effective bits per weight and its
measured KL(reference || quantized) per token (Optuna metric names ``avg_bits``, ``kl``), so
the dashboard's Pareto front is the bits/quality trade-off. Its configuration
(:class:`StudyConfig`) is stored as the study user attribute ``bitalloc``: a worker needs only
the storage and the study name.

Every trial a study will run is queued up front as a WAITING trial (a sweep point, or an empty
slot whose params the sampler fills in); workers pop them atomically
(:mod:`bitalloc.studies.worker`), which is what makes the trial count exact with any number of
workers.

Encoding (``kind="sample"``): one categorical param per free unit (named by the unit) and per
tie group (``tie:<label>``), its choices the formats every member allows. Sweeps use the params
``budget``, ``estimator`` and ``solver``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from ..search.choices import Choice, set_choice
from .storage import StorageOptions, StorageSpec, open_storage, resolve_storage

if TYPE_CHECKING:
    import optuna

    from ..search.solution import Solution

CONFIG_ATTR = "bitalloc"
METRICS = ("avg_bits", "kl")


class StudyKind(Choice):
    """A study samples plans (the sampler picks formats) or sweeps a fixed grid."""

    SAMPLE = "sample"
    SWEEP = "sweep"


KINDS = StudyKind.values()


@dataclass(frozen=True, slots=True)
class StudyConfig:
    """What a study searches and how each trial is measured.

    Args:
        model: built-in model name or local Hugging Face folder (every worker loads it).
        kind: ``"sample"`` (the sampler picks a format per unit / tie group) or ``"sweep"``
            (the grid ``budgets x estimators x solvers`` of solved plans).
        formats: format keys of the search space.
        tie: ``"auto"``, ``"none"`` or comma-separated tie regexes (as ``bitalloc search``).
        budgets: sweep: average-bits grid; sample: at most one, a constraint
            ``avg_bits <= budget`` (``Trial.set_constraint("over_budget", avg_bits - budget)``,
            which TPE and NSGA-II honour; over-budget plans are kept, marked infeasible).
        estimators: sweep axis; for ``sample`` the first one scores the predicted loss.
        solvers: sweep axis (registered solver names).
        sampler: ``tpe``, ``random`` or ``nsga2`` (sample studies).
        seed: sampler and calibration seed.
        n_windows, seq_len: held-out windows each plan is measured on.
        n_calib: calibration windows (Wikipedia calibration split) for data-aware estimators.
        corpus: the held-out text (a corpus name of :func:`bitalloc.data.corpus_names`).
    """

    model: str
    kind: StudyKind | str = StudyKind.SAMPLE
    formats: tuple[str, ...] = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")
    tie: str = "auto"
    budgets: tuple[float, ...] = ()
    estimators: tuple[str, ...] = ("auto",)
    solvers: tuple[str, ...] = ("ilp",)
    sampler: str = "tpe"
    seed: int = 0
    n_windows: int = 4
    seq_len: int = 128
    n_calib: int = 8
    corpus: str = "wikipedia-heldout"

    def __post_init__(self) -> None:
        for name in ("formats", "estimators", "solvers"):
            object.__setattr__(self, name, tuple(str(x) for x in getattr(self, name)))
        object.__setattr__(self, "budgets", tuple(float(b) for b in self.budgets))
        from ..solvers.optuna_search import Sampler

        set_choice(self, "kind", StudyKind)
        set_choice(self, "sampler", Sampler)
        if not self.formats or not self.estimators or not self.solvers:
            raise ValueError("`formats`, `estimators` and `solvers` must each be non-empty")
        if any(not math.isfinite(b) or b <= 0 for b in self.budgets):
            raise ValueError(f"`budgets` must be positive average bits, got {self.budgets}")
        self._check_budget_range()
        if self.kind == "sweep" and not self.budgets:
            raise ValueError("a sweep needs `budgets` (average bits)")
        if self.kind == "sample" and len(self.budgets) > 1:
            raise ValueError("a sample study takes at most one budget (a constraint)")
        for name in ("n_windows", "seq_len", "n_calib"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)!r}")

    def _check_budget_range(self) -> None:
        """Refuse budgets no plan of ``formats`` can meet (checked on a large nominal weight:
        the exact bounds depend on the model's shapes and are checked per trial)."""
        from ..search.formats import parse_formats

        shape = (4096, 4096)
        bits = [f.bits_per_weight(shape) for f in parse_formats(list(self.formats))]
        low, high = min(bits), max(bits)
        bad = [b for b in self.budgets if not low * 0.95 <= b <= high * 1.05]
        if bad:
            raise ValueError(
                f"`budgets` {bad} are outside what `formats` {list(self.formats)} can store: "
                f"average bits from about {low:.3g} to {high:.3g}"
            )

    def grid(self) -> list[dict[str, Any]]:
        """Sweep points, budget-major: ``{"budget", "estimator", "solver"}`` dicts."""
        if self.kind != "sweep":
            return []
        return [
            {"budget": b, "estimator": e, "solver": s}
            for b, e, s in itertools.product(self.budgets, self.estimators, self.solvers)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudyConfig:
        if not isinstance(d, Mapping) or "model" not in d:
            raise ValueError("not a bitalloc study configuration (no 'model')")
        known = {f.name for f in fields(cls)}
        return cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        )


def make_sampler(config: StudyConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler named by ``config`` (sweeps fix every param, so any sampler works)."""
    from ..solvers.optuna_search import make_sampler as build

    seed = config.seed if seed is None else seed
    return build("random" if config.kind == "sweep" else config.sampler, seed)


def create_study(
    name: str,
    config: StudyConfig,
    storage: StorageSpec | str | None = None,
    *,
    n_trials: int = 0,
    options: StorageOptions | None = None,
) -> optuna.Study:
    """Create the study and queue its trials: the whole grid for a sweep, ``n_trials`` empty
    slots for a sample study. An existing study of that name raises ValueError."""
    import optuna

    if not isinstance(config, StudyConfig):
        raise TypeError(f"`config` must be a StudyConfig, got {type(config).__name__}")
    spec = storage if isinstance(storage, StorageSpec) else resolve_storage(storage, name)
    store = open_storage(spec, name, options)
    try:
        study = optuna.create_study(
            storage=store,
            study_name=name,
            directions=["minimize"] * len(METRICS),
            sampler=make_sampler(config),
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise ValueError(
            f"study {name!r} already exists in {spec.describe()}; use `run`/`worker` on it"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(METRICS))
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    for point in config.grid():
        study.enqueue_trial(point)
    add_slots(study, n_trials if config.kind == "sample" else 0)
    return study


def add_slots(study: optuna.Study, n: int) -> None:
    """Queue ``n`` more sampled trials (empty WAITING trials the sampler fills in)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"`n_trials` must be an int >= 0, got {n!r}")
    for _ in range(n):
        study.enqueue_trial({})


def load_study(
    name: str,
    storage: StorageSpec | str | None = None,
    *,
    seed: int | None = None,
    options: StorageOptions | None = None,
) -> tuple[optuna.Study, StudyConfig]:
    """Open an existing study with its configured sampler (``seed`` overrides the config's)."""
    import optuna

    spec = storage if isinstance(storage, StorageSpec) else resolve_storage(storage, name)
    store = open_storage(spec, name, options, create=False)
    try:
        study = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise ValueError(
            f"no study {name!r} in {spec.describe()}; studies there: {names or 'none'}"
        ) from None
    config = StudyConfig.from_dict(study.user_attrs.get(CONFIG_ATTR, {}))
    study.sampler = make_sampler(config, seed)
    return study, config


def trial_plan(trial: optuna.trial.FrozenTrial) -> Solution:
    """The plan a finished trial measured (user attribute ``plan``)."""
    from ..search.solution import Solution

    plan = trial.user_attrs.get("plan")
    if plan is None:
        raise ValueError(f"trial {trial.number} holds no plan (state {trial.state.name})")
    return Solution.from_dict(plan)
