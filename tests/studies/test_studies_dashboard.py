"""optuna-dashboard served on 127.0.0.1 against a study; Pareto plots; `study show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, tiny_model_dir):
    """A solver comparison (2 solvers x 3 budgets) run to the end in a journal file."""
    import optuna

    from bitalloc.studies.objective import PlanObjective
    from bitalloc.studies.study import create_study
    from bitalloc.studies.sweeps import solver_comparison
    from bitalloc.studies.worker import run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = solver_comparison(
        str(tiny_model_dir),
        ["greedy", "ilp"],
        [2.5, 3.5, 5.0],
        estimator="weight_error",
        seq_len=32,
        n_windows=2,
        n_calib=2,
        corpus="lee",
    )
    storage = str(tmp_path_factory.mktemp("dash") / "d.journal")
    study = create_study("cmp", cfg, storage)
    run_worker(study, PlanObjective.from_config(cfg))
    return study, storage


def test_dashboard_serves_the_study(finished_study, tmp_path) -> None:
    from bitalloc.studies.dashboard import Dashboard

    study, storage = finished_study
    server = Dashboard.start(storage, log=tmp_path / "dash.log")
    try:
        assert server.url.startswith("http://127.0.0.1:")
        status, page = server.get("/dashboard")
        assert status == 200 and b"<html" in page.lower()
        status, body = server.get("/api/studies")
        assert status == 200
        summaries = json.loads(body)["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["cmp"]
        assert summaries[0]["directions"] == ["minimize", "minimize"]
        status, bundle = server.get("/static/bundle.js")  # needs Accept-Encoding (sent)
        assert status == 200 and len(bundle) > 100_000
    finally:
        server.stop()
    assert server.process.poll() is not None
    with pytest.raises(ValueError, match="does not exist"):
        Dashboard.start(tmp_path / "missing.journal")


def test_pareto_plots_and_show(finished_study, tmp_path, capsys) -> None:
    from bitalloc.cli import main
    from bitalloc.studies.plots import pareto_front, save_pareto_plots, trial_rows

    assert pareto_front([(1, 5), (2, 3), (2, 4), (3, 3), (1, 5)]) == {0, 1, 4}
    study, storage = finished_study
    rows = trial_rows(study)
    assert {r["series"] for r in rows} == {"greedy", "ilp"} and len(rows) == 6
    for series in ("greedy", "ilp"):
        group = [r for r in rows if r["series"] == series]
        front = pareto_front([(r["avg_bits"], r["ppl"]) for r in group])
        assert [r["pareto"] for r in group] == [i in front for i in range(len(group))]
    png, page = save_pareto_plots(study, tmp_path / "cmp")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert "<svg" in text and text.count("<tr") == 1 + len(rows)

    assert main(["study", "show", "cmp", "--storage", storage, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["counts"]["complete"] == 6 and len(shown["trials"]) == 6
    plan_file = tmp_path / "plan.json"
    assert (
        main(
            ["study", "show", "cmp", "--storage", storage, "--plan", "2", "--out", str(plan_file)]
        )
        == 0
    )
    from bitalloc.search.solution import Solution

    plan = Solution.load(plan_file)
    trial = study.get_trials()[2]
    assert plan.avg_bits == trial.values[0] and plan.meta["solver"] == trial.params["solver"]
    assert main(["study", "show", "nope", "--storage", storage]) == 2


def test_dashboard_child_dies_with_a_sigkilled_parent(finished_study, spawn) -> None:
    """``kill -9`` of ``bitalloc study dashboard`` leaves no optuna-dashboard listening."""
    import os
    import signal
    import time

    _, storage = finished_study
    proc = spawn("study", "dashboard", "--storage", storage)
    line = proc.stdout.readline()
    assert "optuna-dashboard serving" in line, proc.stderr.read()[-2000:]
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1
    child = int(children[0])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        status = (
            Path(f"/proc/{child}/status").read_text() if Path(f"/proc/{child}").exists() else ""
        )
        if "State:\tZ" in status:
            break  # exited; only its zombie entry waits for init to reap it
        time.sleep(0.1)
    status = Path(f"/proc/{child}/status").read_text() if Path(f"/proc/{child}").exists() else ""
    assert not status or "State:\tZ" in status, "optuna-dashboard outlived its parent"
