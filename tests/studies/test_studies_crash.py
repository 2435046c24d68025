"""Crash safety: SIGKILL a worker mid-trial; finished trials survive, the stale one is failed
by the heartbeat and retried, and a resumed run completes exactly the remaining trials."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter
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


def _wait_for(flag: Path, proc, what: str) -> None:  # noqa: ANN001
    """Until the worker writes ``flag``; fails with its stderr if it exits, or ``what``
    after two minutes."""
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


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
    _wait_for(flag, proc, "the worker never reached its third trial")
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


# A worker whose first trial writes FLAG, then sleeps SLEEP seconds (the test stops it with
# SIGSTOP meanwhile) before finishing the trial for real.
PAUSING_WORKER = """
import pathlib, sys, time
from bitalloc.studies.objective import PlanObjective
from bitalloc.studies.storage import StorageOptions
from bitalloc.studies.study import load_study
from bitalloc.studies.worker import run_worker

name, storage, flag = sys.argv[1:4]
options = StorageOptions(heartbeat_interval=1, grace_period=2)
study, cfg = load_study(name, storage, options=options)
real = PlanObjective.from_config(cfg)

def objective(trial):
    if not pathlib.Path(flag).exists():
        pathlib.Path(flag).write_text(str(trial.number))
        time.sleep(4)
    return real(trial)

report = run_worker(study, objective)
print("paused worker done", report.completed, report.failed)
"""


def test_a_worker_stopped_past_the_grace_period_goes_on_after_sigcont(
    storage_url, tmp_path, spawn, study_name, tiny_config, capsys
) -> None:
    """Issue 11 D3 with real signals: SIGSTOP a worker mid-trial past the grace period; a
    second worker fails the trial as stale and runs its retry; after SIGCONT the first
    worker drops its stale result and exits 0. Every point completes exactly once."""
    from optuna.trial import TrialState

    from bitalloc.cli import main
    from bitalloc.studies.study import create_study, load_study

    cfg = tiny_config(kind="sweep", budgets=(3.0, 4.0, 5.0), solvers=("greedy",))
    create_study(study_name, cfg, storage_url)
    flag = tmp_path / "paused"
    proc = spawn("-c", PAUSING_WORKER, study_name, storage_url, str(flag))
    _wait_for(flag, proc, "the worker never started its first trial")
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        time.sleep(3.5)  # past the 2 s grace: the trial's heartbeat is stale
        argv = ["study", "run", study_name, "--storage", storage_url, "--heartbeat", "1"]
        assert main([*argv, "--grace", "2"]) == 0
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "paused worker done 0 0" in out
    assert "failed as stale while this worker was paused" in err
    stale = int(flag.read_text())
    trials = load_study(study_name, storage_url)[0].get_trials()
    done = [t for t in trials if t.state is TrialState.COMPLETE]
    assert sorted(t.params["budget"] for t in done) == sorted(cfg.budgets)
    assert [t.number for t in trials if t.state is TrialState.FAIL] == [stale]


STUDY_GRID = ("2.5", "3", "3.5", "4", "4.5", "5")


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", "sqlite", "postgres"])
def test_sigkill_study_workers_at_random_points(
    storage: str, tiny_model_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`study run` SIGKILLed at random points (at or just after a journal append; at a random
    moment for the SQL storages, whose writes happen in C): the study stays readable, no
    finished trial is lost, and the resumed run completes every grid point exactly once."""
    from optuna.trial import TrialState

    from bitalloc.studies.storage import StorageOptions
    from bitalloc.studies.study import load_study
    from tests.crash.harness import run

    root = tmp_path / "study"
    root.mkdir()
    url = {
        "journal": lambda: str(root / "s.journal"),
        "sqlite": lambda: f"sqlite:///{root / 's.db'}",
        "postgres": lambda: request.getfixturevalue("postgres_url"),
    }[storage]()
    name = f"crash-{uuid.uuid4().hex[:8]}"
    env = {"BITALLOC_CACHE_DIR": str(root / "cache")}
    create = (
        f"study create {name} --model {tiny_model_dir} --storage {url} --kind budget-sweep "
        f"--budgets {','.join(STUDY_GRID)} --estimators weight_error --solvers greedy "
        "--seq-len 32 --windows 2 --n-calib 2 --corpus lee"
    ).split()
    out = run(create, root=root, cwd=root, env=env)
    assert out.exitcode == 0, out.log[-2000:]
    work = ["study", "run", name, "--storage", url, "--heartbeat", "1", "--grace", "2", "-q"]
    rng = random.Random(f"crash-study-{storage}")
    cases = 2 + int(os.environ.get("BITALLOC_CRASH_CASES", "3"))
    complete_before: set[int] = set()
    kills = 0
    for case in range(cases):
        if storage == "journal":  # at a random journal append (or just after it)
            kill_at, delay = rng.randrange(1, 80), rng.choice([0.0, rng.uniform(0.1, 20.0)])
        else:  # SQLite writes from C: a random moment
            kill_at, delay = -1, rng.uniform(300.0, 3000.0)
        out = run(work, root=root, cwd=root, env=env, kill_at=kill_at, delay_ms=delay)
        assert out.exitcode in (0, -9), out.log[-2000:]
        kills += out.killed
        study, _ = load_study(name, url)  # readable after every kill
        trials = study.get_trials(deepcopy=False)
        complete = {t.number for t in trials if t.state is TrialState.COMPLETE}
        assert complete_before <= complete, f"case {case}: lost {complete_before - complete}"
        complete_before = complete
    out = run(work, root=root, cwd=root, env=env)
    assert out.exitcode == 0, out.log[-2000:]
    trials = load_study(name, url)[0].get_trials(deepcopy=False)
    done = [
        float(t.system_attrs["fixed_params"]["budget"])
        for t in trials
        if t.state is TrialState.COMPLETE
    ]
    assert len(done) == len(set(done)), f"a point ran twice: {sorted(done)}"
    fails = Counter(
        float(t.system_attrs["fixed_params"]["budget"])
        for t in trials
        if t.state is TrialState.FAIL
    )
    for budget in map(float, STUDY_GRID):  # complete, or killed past its retries (max_retry)
        assert budget in done or fails[budget] > StorageOptions().max_retry, (budget, fails)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    gave_up = len(STUDY_GRID) - len(done)
    print(
        f"\ncrash study-{storage}: {kills} of {cases} runs killed, {len(done)} points complete, "
        f"{gave_up} killed past max_retry, 0 failures"
    )
