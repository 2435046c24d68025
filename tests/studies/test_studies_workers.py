"""Several workers on one study: exactly the queued trials run, none twice, none lost."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

N_THREADS = 4
N_QUEUED = 40


def _fast_objective(trial):
    """No model: values from the params, a short sleep so the workers overlap."""
    import time

    b = trial.suggest_categorical("budget", [float(i) for i in range(N_QUEUED)])
    trial.set_user_attr("thread", threading.current_thread().name)
    time.sleep(0.01)
    return b, 1.0 / (1.0 + b)


def test_threads_share_a_queue(storage_url, study_name) -> None:
    """Four workers, each with its own storage connection, race for 40 queued points."""
    import optuna
    from optuna.trial import TrialState

    from bitalloc.studies.storage import open_storage
    from bitalloc.studies.worker import run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=open_storage(storage_url), study_name=study_name, directions=["minimize"] * 2
    )
    for b in range(N_QUEUED):
        study.enqueue_trial({"budget": float(b)})
    reports = []

    def work() -> None:
        own = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
        reports.append(run_worker(own, _fast_objective))

    threads = [threading.Thread(target=work, name=f"w{i}") for i in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trials = study.get_trials()
    assert len(trials) == N_QUEUED
    assert all(t.state is TrialState.COMPLETE for t in trials)
    assert sorted(t.params["budget"] for t in trials) == [float(b) for b in range(N_QUEUED)]
    assert sum(r.completed for r in reports) == N_QUEUED
    assert len(Counter(t.user_attrs["thread"] for t in trials)) >= 2


@pytest.mark.parametrize("backend", ["journal", "postgres"])
def test_two_worker_processes(backend, request, tmp_path, spawn, study_name, tiny_config) -> None:
    """`bitalloc study worker` twice on one budget x solver grid on the tiny model."""
    from optuna.trial import TrialState

    from bitalloc.studies.study import create_study, load_study

    storage = (
        str(tmp_path / "w.journal")
        if backend == "journal"
        else request.getfixturevalue("postgres_url")
    )
    cfg = tiny_config(kind="sweep", budgets=(2.5, 3.5, 5.0), solvers=("greedy", "lagrangian"))
    create_study(study_name, cfg, storage)
    grid = {tuple(p.values()) for p in cfg.grid()}
    procs = [spawn("study", "worker", study_name, "--storage", storage) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    done = sum(int(out.rsplit("worker done: ", 1)[1].split()[0]) for out, _ in outs)
    study, _ = load_study(study_name, storage)
    trials = study.get_trials()
    assert len(trials) == len(grid) == done
    assert all(t.state is TrialState.COMPLETE for t in trials)
    points = [(t.params["budget"], t.params["estimator"], t.params["solver"]) for t in trials]
    assert len(set(points)) == len(points) and set(points) == grid
    pids = {str(p.pid) for p in procs}
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials} <= pids


def _heartbeat_study(storage_url, study_name):
    import optuna

    from bitalloc.studies.storage import StorageOptions, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opts = StorageOptions(heartbeat_interval=1, grace_period=2)
    return optuna.create_study(
        storage=open_storage(storage_url, options=opts),
        study_name=study_name,
        directions=["minimize"] * 2,
    )


def test_a_stale_trial_failed_without_its_retry_is_requeued(storage_url, study_name) -> None:
    """A worker killed between failing a stale trial and queuing its retry (two writes)
    leaves the point with no retry: the next worker re-queues it, and it runs once."""
    from optuna.trial import TrialState

    from bitalloc.studies.worker import claim, run_worker

    study = _heartbeat_study(storage_url, study_name)
    for b in range(3):
        study.enqueue_trial({"budget": float(b)})
    stale = claim(study)
    assert stale is not None
    study._storage.set_trial_state_values(stale._trial_id, state=TrialState.FAIL)  # no retry
    report = run_worker(study, _fast_objective)
    trials = study.get_trials()
    done = sorted(t.params["budget"] for t in trials if t.state is TrialState.COMPLETE)
    assert done == [0.0, 1.0, 2.0] and report.completed == 3
    assert [t.number for t in trials if t.state is TrialState.FAIL] == [stale.number]


def test_two_retries_of_one_failed_trial_run_once(storage_url, study_name) -> None:
    """Two workers repairing the same orphan at once queue two retries: only one runs."""
    from optuna.trial import TrialState

    from bitalloc.studies.worker import claim, run_worker

    study = _heartbeat_study(storage_url, study_name)
    study.enqueue_trial({"budget": 7.0})
    stale = claim(study)
    assert stale is not None
    study._storage.set_trial_state_values(stale._trial_id, state=TrialState.FAIL)
    retry = study._storage.get_heartbeat_stale_trial_callback()
    frozen = study._storage.get_trial(stale._trial_id)
    retry(study, frozen)
    retry(study, frozen)
    report = run_worker(study, _fast_objective)
    trials = study.get_trials()
    assert [t.params["budget"] for t in trials if t.state is TrialState.COMPLETE] == [7.0]
    assert report.completed == 1
    dropped = [t for t in trials if "duplicate retry" in t.user_attrs.get("error", "")]
    assert len(dropped) == 1 and dropped[0].state is TrialState.FAIL
