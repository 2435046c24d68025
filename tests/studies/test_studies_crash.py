"""Crash safety: SIGKILL a worker mid-trial; finished trials survive, the stale one is failed
by the heartbeat and retried, and a resumed run completes exactly the remaining trials."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

# A worker whose third trial solves its plan, writes its number to FLAG and blocks forever (so
# the kill lands mid-trial, deterministically); heartbeat every second, stale after two.
BLOCKING_WORKER = """
import pathlib, sys, time
from bitalloc.studies.objective import PlanObjective
from bitalloc.studies.storage import StorageOptions
from bitalloc.studies.study import load_study
from bitalloc.studies.worker import run_worker

name, storage, flag = sys.argv[1:4]
options = StorageOptions(heartbeat_interval=1, grace_period=2)
study, cfg = load_study(name, storage, options=options)
real = PlanObjective.from_config(cfg)
done = []

def objective(trial):
    if len(done) == 2:
        real.plan(trial)  # the sweep point's params are set and its plan solved, then hang
        pathlib.Path(flag).write_text(str(trial.number))
        time.sleep(600)
    done.append(trial.number)
    return real(trial)

run_worker(study, objective)
"""


@pytest.fixture(params=["journal", "sqlite"])
def storage_url(request, tmp_path) -> str:
    if request.param == "journal":
        return str(tmp_path / "c.journal")
    return f"sqlite:///{tmp_path / 'c.db'}"


def test_sigkill_mid_trial_then_resume(
    storage_url, tmp_path, spawn, study_name, tiny_config, capsys
):
    from optuna.trial import TrialState

    from bitalloc.cli import main
    from bitalloc.studies.study import create_study, load_study

    cfg = tiny_config(kind="sweep", budgets=(2.5, 3.0, 3.5, 4.0, 5.0), solvers=("greedy",))
    create_study(study_name, cfg, storage_url)
    flag = tmp_path / "blocked"
    proc = spawn("-c", BLOCKING_WORKER, study_name, storage_url, str(flag))
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the worker never reached its third trial"
        time.sleep(0.1)
    killed = int(Path(flag).read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    study, _ = load_study(study_name, storage_url)
    states = {t.number: t.state for t in study.get_trials()}
    assert [n for n, s in states.items() if s is TrialState.COMPLETE] == [0, 1]
    assert states[killed] is TrialState.RUNNING and killed == 2

    capsys.readouterr()
    argv = [
        "study",
        "run",
        study_name,
        "--storage",
        storage_url,
        "--heartbeat",
        "1",
        "--grace",
        "2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "worker done: 3 complete, 0 failed" in out  # 2 never started + the killed one

    trials = load_study(study_name, storage_url)[0].get_trials()
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    failed = [t for t in trials if t.state is TrialState.FAIL]
    assert len(complete) == len(cfg.grid()) and [t.number for t in failed] == [killed]
    assert sorted(t.params["budget"] for t in complete) == sorted(cfg.budgets)
    retry = [t for t in complete if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].params == failed[0].params
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
