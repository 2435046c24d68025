"""Optuna studies over quantization plans: storage, workers, sweeps, dashboard, plots.

A study stores every evaluated plan as an Optuna trial: the format of each unit or tie group
(sampled studies) or the sweep point (budget, estimator, solver) as params; ``(avg_bits,
measured KL)`` as the two values; bytes, perplexity, predicted loss and the plan JSON as user
attributes. Workers on any Optuna storage (an SQLite file, a journal file, PostgreSQL) drain
the study's queue of waiting trials, so several processes or machines share one study with no
trial duplicated or lost; a heartbeat marks a killed worker's trial failed and re-queues it.

Nothing in the library imports this package, and importing it loads neither optuna nor torch:

    bitalloc study create sweep1 --model smollm2-135m --kind budget-sweep --budgets 2.5,3,4
    bitalloc study worker sweep1 --storage postgresql://user@host/db   # on every machine
    bitalloc study show sweep1 --plot runs/sweep1
    bitalloc study dashboard sweep1
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "StorageOptions": "bitalloc.studies.storage",
    "open_storage": "bitalloc.studies.storage",
    "StudyConfig": "bitalloc.studies.study",
    "create_study": "bitalloc.studies.study",
    "load_study": "bitalloc.studies.study",
    "PlanObjective": "bitalloc.studies.objective",
    "run_worker": "bitalloc.studies.worker",
    "budget_sweep": "bitalloc.studies.sweeps",
    "estimator_comparison": "bitalloc.studies.sweeps",
    "solver_comparison": "bitalloc.studies.sweeps",
    "Dashboard": "bitalloc.studies.dashboard",
    "save_pareto_plots": "bitalloc.studies.plots",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bitalloc.studies' has no attribute {name!r}")
