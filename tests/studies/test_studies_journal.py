"""Torn journal records: a writer killed mid-append must not cost the study its trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest


def _backend(path: Path):
    from bitalloc.studies.journal import SafeJournalFileBackend

    return SafeJournalFileBackend(str(path))


def _records(n: int) -> list[dict]:
    return [
        {"op_code": 0, "worker_id": "w", "study_name": f"s{i}", "directions": [1]}
        for i in range(n)
    ]


def test_torn_tail_is_cut_before_the_next_append(tmp_path) -> None:
    from bitalloc.studies.journal import JournalRepairWarning

    path = tmp_path / "j.journal"
    backend = _backend(path)
    backend.append_logs(_records(3))
    whole = path.read_bytes()
    path.write_bytes(whole[:-40])  # the third record lost its end and its newline
    # a reader skips the torn record (it was never complete) ...
    assert [r["study_name"] for r in _backend(path).read_logs(0)] == ["s0", "s1"]
    with pytest.warns(JournalRepairWarning, match="torn last record"):
        backend.append_logs(_records(1))
    # ... and the next append no longer glues onto it
    names = [r["study_name"] for r in _backend(path).read_logs(0)]
    assert names == ["s0", "s1", "s0"]
    backups = list(tmp_path.glob("j.journal.torn-*"))
    assert len(backups) == 1 and whole[:-40].endswith(backups[0].read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file is not touched again
        backend.append_logs(_records(1))


def test_glued_record_is_repaired_on_read(tmp_path) -> None:
    """A file written before the fix: torn prefix + next record on one line, then more."""
    from bitalloc.studies.journal import JournalRepairWarning

    path = tmp_path / "j.journal"
    lines = [json.dumps(r, separators=(",", ":")).encode() for r in _records(4)]
    glued = lines[1][:-25] + lines[2]  # record 1 torn, record 2 appended onto it
    garbage = b"\xff\xfe not json"
    original = b"\n".join([lines[0], glued, garbage, lines[3]]) + b"\n"
    path.write_bytes(original)
    with pytest.warns(JournalRepairWarning, match=r"repaired 2 .*1 kept.*1 removed"):
        names = [r["study_name"] for r in _backend(path).read_logs(0)]
    assert names == ["s0", "s2", "s3"]
    (backup,) = tmp_path.glob("j.journal.corrupt-*")
    assert backup.read_bytes() == original
    assert [r["study_name"] for r in _backend(path).read_logs(0)] == names


def test_issue_repro_truncated_journal_keeps_every_finished_trial(
    tmp_path, study_name, tiny_config, capsys
) -> None:
    """``study run``; ``truncate -s -40``; ``study run``: run and show both work."""
    from optuna.trial import TrialState

    from bitalloc.cli import main
    from bitalloc.studies.study import create_study, load_study

    storage = str(tmp_path / "sj.journal")
    cfg = tiny_config(kind="sweep", budgets=(3.0, 4.0), solvers=("greedy",))
    create_study(study_name, cfg, storage)
    run = ["study", "run", study_name, "--storage", storage, "--heartbeat", "1", "--grace", "3"]
    assert main(run) == 0
    done = {
        t.number
        for t in load_study(study_name, storage)[0].get_trials()
        if t.state is TrialState.COMPLETE
    }
    assert len(done) == 2
    with open(storage, "rb+") as f:
        f.truncate(os.path.getsize(storage) - 40)
    with pytest.warns(Warning):
        assert main(run) == 0
    capsys.readouterr()
    assert main(["study", "show", study_name, "--storage", storage]) == 0
    trials = load_study(study_name, storage)[0].get_trials()
    # the last record (the second trial's end) was torn: that trial is re-run, none is lost
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert sorted(t.params["budget"] for t in complete)[-2:] == [3.0, 4.0]
    assert {t.number for t in complete} >= done - {max(done)}


# Writes big records as fast as it can: a SIGKILL inside write(2) stops it between pages.
HAMMER = """
import sys
from bitalloc.studies.journal import SafeJournalFileBackend
b = SafeJournalFileBackend(sys.argv[1])
pad = "x" * 4_000_000
i = 0
while True:
    b.append_logs([{"op_code": 0, "worker_id": "w", "study_name": f"w-{i}", "directions": [1],
                    "pad": pad}])
    i += 1
"""


@pytest.mark.slow
def test_real_sigkills_mid_write_never_make_the_journal_unreadable(tmp_path) -> None:
    """Two writers on one journal, both SIGKILLed at a random moment, round after round,
    until three kills have torn a record (or 40 rounds): after each, the next append and a
    full read work, and no complete record is lost."""
    import random

    from bitalloc.studies.journal import JournalRepairWarning

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    rng = random.Random(0)
    torn = rounds = 0
    while torn < 3 and rounds < 40:
        rounds += 1
        path = tmp_path / f"k{rounds}.journal"
        _backend(path).append_logs(_records(2))
        procs = [
            subprocess.Popen([sys.executable, "-c", HAMMER, str(path)], env=env) for _ in range(2)
        ]
        time.sleep(0.8 + 0.4 * rng.random())
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        data = path.read_bytes()
        torn += not data.endswith(b"\n")
        complete = data.count(b"\n")
        start = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", JournalRepairWarning)
            _backend(path).append_logs(_records(1))  # a killed writer's lock is not waited out
            logs = list(_backend(path).read_logs(0))
        assert time.monotonic() - start < 20
        assert len(logs) == complete + 1 and path.read_bytes().endswith(b"\n")
        path.unlink()
    assert torn >= 1, f"no kill in {rounds} rounds landed mid-record: nothing was tested"


def test_a_worker_paused_past_the_grace_period_drops_the_failed_trial_and_goes_on(
    tmp_path, study_name, tiny_config
) -> None:
    """Issue 11 D3: while this worker was stopped, another failed its trial as stale; on
    continuing, its writes to that trial raise UpdateFinishedTrialError. It must go on."""
    from optuna.trial import TrialState

    from bitalloc.studies.objective import PlanObjective
    from bitalloc.studies.study import create_study
    from bitalloc.studies.worker import run_worker

    cfg = tiny_config(kind="sweep", budgets=(3.0, 4.0), solvers=("greedy",))
    study = create_study(study_name, cfg, str(tmp_path / "p.journal"))
    real = PlanObjective.from_config(cfg)
    seen: list[int] = []

    def objective(trial):
        if not seen:  # first trial: "another worker" fails it as stale mid-run
            seen.append(trial.number)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return real(trial)

    report = run_worker(study, objective)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[seen[0]] is TrialState.FAIL
    # the stale trial was failed here without its retry (as a worker killed between the two
    # writes would leave it): the worker re-queues it, so both points complete, each once
    assert report.completed == 2 and report.failed == 0
    done = [t.params["budget"] for t in study.get_trials() if t.state is TrialState.COMPLETE]
    assert sorted(done) == [3.0, 4.0]
