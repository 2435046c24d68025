"""Storage resolution and round trips of studies on journal, SQLite and PostgreSQL."""

from __future__ import annotations

import math

import pytest

from bitalloc.studies.storage import StorageOptions, StorageSpec, resolve_storage


def test_resolve_storage() -> None:
    assert resolve_storage(None, "s1") == StorageSpec("journal", "runs/s1.journal")
    assert resolve_storage("a/b.journal", "s") == StorageSpec("journal", "a/b.journal")
    assert resolve_storage("journal:/x/y", "s") == StorageSpec("journal", "/x/y")
    assert resolve_storage("a/b.db", "s") == StorageSpec("rdb", "sqlite:///a/b.db")
    url = "postgresql://u:secret@h:5432/db"
    spec = resolve_storage(url, "s")
    assert spec.kind == "rdb" and spec.target.endswith("://u:secret@h:5432/db")
    assert spec.target.startswith("postgresql")
    assert "secret" not in spec.describe() and spec.describe().endswith("//u:***@h:5432/db")
    with pytest.raises(ValueError, match="storage"):
        resolve_storage("study.txt", "s")
    with pytest.raises(ValueError, match="study name"):
        resolve_storage(None, "../evil")
    with pytest.raises(ValueError, match="heartbeat_interval"):
        StorageOptions(heartbeat_interval=0)
    with pytest.raises(ValueError, match="grace_period"):
        StorageOptions(heartbeat_interval=5, grace_period=5)
    assert StorageOptions(heartbeat_interval=3).grace == 6


def test_config_and_plan_encoding(tiny_llama, tiny_config) -> None:
    from bitalloc.search.params import params_to_choice, plan_params, plan_to_params
    from bitalloc.search.solution import Solution, Status
    from bitalloc.search.space import SearchSpace
    from bitalloc.studies.study import StudyConfig

    cfg = tiny_config(kind="sweep", budgets=(3, 4), solvers=("ilp", "greedy"))
    assert StudyConfig.from_dict(cfg.to_dict()) == cfg
    assert len(cfg.grid()) == 4 and len({tuple(p.values()) for p in cfg.grid()}) == 4
    with pytest.raises(ValueError, match="budgets"):
        tiny_config(kind="sweep")
    with pytest.raises(ValueError, match="kind"):
        tiny_config(kind="grid")
    space = SearchSpace.from_model(tiny_llama, ["int2-g64", "int4-g64", "int8-g64"], tie="auto")
    params = plan_params(space)
    groups = space.tie_groups()
    free = sum(u.tie is None for u in space.units)
    assert len(params) == free + len(groups) < len(space)  # q/k/v and gate/up share a param
    choice = tuple(
        space.units[i].allowed[i % len(space.units[i].allowed)] for i in range(len(space))
    )
    # make tie groups consistent: a group takes its first member's format
    first = {u.tie: choice[i] for i, u in reversed(list(enumerate(space.units))) if u.tie}
    choice = tuple(first.get(u.tie, c) if u.tie else c for u, c in zip(space.units, choice))
    sol = Solution(space=space, choice=choice, status=Status.FEASIBLE)
    assert params_to_choice(space, plan_to_params(sol)) == choice
    with pytest.raises(ValueError, match="trial params lack"):
        params_to_choice(space, {})


@pytest.fixture(scope="module")
def sample_objective(tiny_model_dir):
    """One loaded objective shared by the round trips (a sample study, 4-bit constraint)."""
    from bitalloc.studies.objective import PlanObjective
    from bitalloc.studies.study import StudyConfig

    cfg = StudyConfig(
        model=str(tiny_model_dir),
        budgets=(4.0,),
        sampler="random",
        estimators=("weight_error",),
        seq_len=32,
        n_windows=2,
        n_calib=2,
        corpus="lee",
    )
    return PlanObjective.from_config(cfg)


def test_round_trip(storage_url, study_name, sample_objective, tiny_model_dir) -> None:
    """Create, run 3 sampled trials, reopen from a fresh storage object: config, params,
    values, user attributes and the plan JSON all come back, and the plan is the params."""
    from optuna.trial import TrialState

    from bitalloc.search.params import params_to_choice
    from bitalloc.studies.study import create_study, load_study, trial_plan
    from bitalloc.studies.worker import run_worker

    objective = sample_objective
    cfg = objective.config
    create_study(study_name, cfg, storage_url, n_trials=3)
    with pytest.raises(ValueError, match="already exists"):
        create_study(study_name, cfg, storage_url)
    study, loaded = load_study(study_name, storage_url)
    assert loaded == cfg
    report = run_worker(study, objective)
    assert (report.completed, report.failed, report.pruned) == (3, 0, 0)

    again, _ = load_study(study_name, storage_url)
    trials = again.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert again.metric_names == ["avg_bits", "kl"]
    for t in trials:
        plan = trial_plan(t)
        assert plan.choice == params_to_choice(objective.space, t.params)
        assert math.isclose(t.values[0], plan.avg_bits) and t.values[0] == t.user_attrs["avg_bits"]
        assert t.values[1] == t.user_attrs["kl"] >= 0
        assert t.user_attrs["bytes"] == plan.nbytes
        assert t.user_attrs["ppl"] > 1
        assert math.isclose(t.user_attrs["over_budget"], plan.avg_bits - 4.0)
        assert t.constraints == {"over_budget": t.user_attrs["over_budget"]}
        assert plan.meta["model"] == str(tiny_model_dir)
    with pytest.raises(ValueError, match="no study"):
        load_study("missing-" + study_name, storage_url)


def test_sweep_infeasible_and_failing_trials(tmp_path, study_name, tiny_config) -> None:
    """A budget below the space's minimum is PRUNED with the solver's message; an objective
    error is recorded as FAIL and re-raised (or counted when caught)."""
    from optuna.trial import TrialState

    from bitalloc.studies.objective import PlanObjective
    from bitalloc.studies.study import create_study
    from bitalloc.studies.worker import run_worker

    cfg = tiny_config(kind="sweep", budgets=(2.2, 4.0), solvers=("greedy",))
    storage = str(tmp_path / "s.journal")
    study = create_study(study_name, cfg, storage)
    report = run_worker(study, PlanObjective.from_config(cfg))
    assert (report.completed, report.pruned) == (1, 1)
    pruned = study.get_trials(states=(TrialState.PRUNED,))[0]
    assert pruned.params["budget"] == 2.2 and "minimum" in pruned.user_attrs["infeasible"]

    def broken(trial):
        raise RuntimeError("boom")

    other = create_study(study_name + "b", cfg, storage)
    with pytest.raises(RuntimeError, match="boom"):
        run_worker(other, broken)
    assert other.trials[0].state is TrialState.FAIL
    assert other.trials[0].user_attrs["error"] == "RuntimeError: boom"
    report = run_worker(other, broken, catch=(RuntimeError,))
    assert (report.failed, report.completed) == (1, 0)  # one trial was left in the queue
