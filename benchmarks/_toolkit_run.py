"""What the toolkit benchmarks (toolkits.py, hqq_plans.py, gptqmodel_plans.py) share on
SmolLM2-135M: the float reference, calibration and held-out windows, a ``results.json`` kept
between runs (rows already measured are skipped), and the held-out KL every row takes."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from bitalloc.data import calibration, evaluate_lm, windows
from bitalloc.models import load


def add_run_args(p: argparse.ArgumentParser, out: str) -> None:
    """``--n-samples``, ``--windows`` and ``--out`` (default ``out``)."""
    p.add_argument("--n-samples", type=int, default=16, help="calibration windows of 512")
    p.add_argument("--windows", type=int, default=8, help="held-out Wikipedia windows of 512")
    p.add_argument("--out", default=out)


class ToolkitRun:
    """SmolLM2 with its float copy, ``calib`` and held-out ``wiki`` windows, and the results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "results.json"
        self.results: dict[str, Any] = (
            json.loads(self.path.read_text()) if self.path.is_file() else {}
        )
        self.model, self.tok = load("smollm2-135m")
        self.reference = copy.deepcopy(self.model)  # every row is measured against it
        self.calib = calibration(self.tok, args.n_samples, 512)
        self.wiki = windows(self.tok, "wikipedia-heldout", 512, args.windows)

    def kl(self, candidate: Any) -> dict[str, float]:
        """Held-out KL to the float model per token, and perplexity."""
        m = evaluate_lm(self.reference, {"m": candidate}, self.wiki)["m"]
        return {"kl": m.kl, "ppl": m.ppl}

    def fake_quant(self, backend: Any, plan: Any) -> dict[str, float]:
        """:meth:`kl` of ``plan`` applied by ``backend`` (the model is restored)."""
        handle = backend.apply(self.model, plan, calib=self.calib)
        try:
            return self.kl(self.model)
        finally:
            handle.restore()

    def record(self, key: str, row: dict[str, Any]) -> None:
        """Merge ``row`` into ``results[key]``, write the file, print the row."""
        self.results[key] = {**self.results.get(key, {}), **row}
        self.path.write_text(json.dumps(self.results, indent=1))
        print(key, json.dumps(row), flush=True)
