"""``import bitalloc`` stays light: no torch, triton, transformers, optuna or solvers."""

from __future__ import annotations

import subprocess
import sys


def test_import_pulls_nothing_heavy() -> None:
    code = (
        "import sys, bitalloc; heavy = [m for m in ('torch', 'triton', 'transformers', "
        "'optuna', 'pulp', 'pandas', 'gensim') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_resolve() -> None:
    import bitalloc

    for name in bitalloc.__all__:
        assert getattr(bitalloc, name) is not None
    assert set(bitalloc.available("solver")) >= {"ilp", "greedy", "uniform", "brute_force"}
    assert set(bitalloc.available("estimator")) >= {"weight_error", "layer_error"}
    assert set(bitalloc.available("backend")) >= {"rtn", "gptq"}
