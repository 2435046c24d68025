"""Study throughput per storage: trials/s on a journal file, SQLite and PostgreSQL.

Two measurements per storage, each on a fresh study of N queued trials drained by one
in-process worker (``run_worker``):

- ``storage only``: a trivial objective (no model): the cost of claiming, heartbeating,
  writing 9 user attributes and telling, i.e. the storage's own overhead per trial;
- ``tiny model``: the real objective (sample a plan, RTN, KL/perplexity on 2 x 32 tokens) on
  a random 2-layer Llama (hidden 64) with the SmolLM2 tokenizer.

PostgreSQL: ``--postgres URL``, else ``BITALLOC_TEST_POSTGRES_URL``, else a throwaway server
from ``.ci/postgres.sh`` when the binaries are installed.

    python benchmarks/studies.py --trials 40
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_model_dir(folder: Path) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bitalloc.models import load

    _, tok = load("smollm2-135m")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    AutoTokenizer.from_pretrained(folder)  # loads back
    return str(folder)


def _trivial(trial):  # type: ignore[no-untyped-def]
    b = trial.suggest_categorical("bits", [2.0, 3.0, 4.0, 8.0])
    for key in ("avg_bits", "bytes", "kl", "ppl", "predicted", "over_budget", "worker", "t"):
        trial.set_user_attr(key, b)
    trial.set_user_attr("plan", {"assignment": {f"u{i}": "int4-g64" for i in range(14)}})
    return b, 1.0 / b


def bench(storage: str, objective, config, n: int) -> float:  # type: ignore[no-untyped-def]
    from bitalloc.studies.study import create_study
    from bitalloc.studies.worker import run_worker

    study = create_study(f"b-{uuid.uuid4().hex[:8]}", config, storage, n_trials=n)
    started = time.perf_counter()
    report = run_worker(study, objective)
    assert report.completed == n, report
    return n / (time.perf_counter() - started)


def main() -> None:
    import optuna

    from bitalloc.studies.objective import PlanObjective
    from bitalloc.studies.study import StudyConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--postgres", default=os.environ.get("BITALLOC_TEST_POSTGRES_URL"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bitalloc-bench-"))
    stop = None
    if not args.postgres:
        out = subprocess.run(
            ["bash", str(REPO / ".ci/postgres.sh"), "start"], capture_output=True, text=True
        )
        if out.returncode == 0:
            env = dict(x.removeprefix("export ").split("=", 1) for x in out.stdout.splitlines())
            args.postgres, stop = (
                env["BITALLOC_TEST_POSTGRES_URL"],
                env["BITALLOC_TEST_POSTGRES_DIR"],
            )
    try:
        config = StudyConfig(
            model=tiny_model_dir(tmp / "tiny"),
            sampler="random",
            estimators=("weight_error",),
            seq_len=32,
            n_windows=2,
            n_calib=2,
        )
        objective = PlanObjective.from_config(config)
        storages = {"journal": str(tmp / "s.journal"), "sqlite": f"sqlite:///{tmp / 's.db'}"}
        if args.postgres:
            storages["postgresql"] = args.postgres
        print(f"{'storage':<12} {'storage only (trials/s)':>24} {'tiny model (trials/s)':>22}")
        for name, url in storages.items():
            bare = bench(url, _trivial, config, args.trials)
            real = bench(url, objective, config, args.trials)
            print(f"{name:<12} {bare:>24.1f} {real:>22.1f}")
    finally:
        if stop:
            subprocess.run(["bash", str(REPO / ".ci/postgres.sh"), "stop", stop], check=False)


if __name__ == "__main__":
    main()
