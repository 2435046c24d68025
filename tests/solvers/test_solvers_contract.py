"""Run the solver contracts (tests/contracts/solver.py) over every registered solver."""

from __future__ import annotations

from typing import Any

from contracts.solver import BlackBoxContract, SolverContract


class TestSolverContract(SolverContract):
    """All registered solvers with their default options."""


class TestBlackBoxContract(BlackBoxContract):
    """Every black-box solver, with short CPU-sized runs."""

    def options(self, name: str) -> dict[str, Any]:
        return {
            "evopress": {"generations": 6, "offspring": 6},
            "optuna": {"n_trials": 40},
            "nsga2": {"pop_size": 16, "n_gen": 8},
        }.get(name, {})
