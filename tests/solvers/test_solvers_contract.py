"""Run the solver contract (tests/contracts/solver.py) over every registered solver."""

from __future__ import annotations

from contracts.solver import SolverContract


class TestSolverContract(SolverContract):
    """All registered solvers with their default options."""
