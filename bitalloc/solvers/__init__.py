"""Solvers: pick one format per unit (tie groups share one) under a memory budget.

Every solver implements :class:`~bitalloc.solvers.base.Solver` (``solve(table, budget) ->
Solution``), is a frozen dataclass whose fields are its options, and registers itself in
:data:`SOLVERS` by name. numpy/scipy/pulp only, never torch.
"""

from __future__ import annotations

from ..search.registry import Registry
from .base import BlackBoxSolver, Solver, SolverBase

CAPABILITIES = ("exact", "black_box", "supports_constraints", "prefers_measured")

SOLVERS: Registry[Solver] = Registry(
    "solver", Solver, " (subclass bitalloc.solvers.SolverBase for the capability flags)"
)
"""Registered solvers by name: ``SOLVERS.get("ilp", time_limit_s=10)``."""


def solvers_with(capability: str) -> tuple[str, ...]:
    """Names of the registered solvers whose class sets ``capability`` (``"exact"``,
    ``"black_box"``, ``"supports_constraints"`` or ``"prefers_measured"``), in name order."""
    if capability not in CAPABILITIES:
        raise ValueError(f"`capability` must be one of {CAPABILITIES}, got {capability!r}")
    return tuple(n for n in SOLVERS.names() if getattr(SOLVERS.cls(n), capability))


# Importing the built-ins registers them (each module decorates its class with SOLVERS).
from .brute_force import BruteForceSolver  # noqa: E402
from .evopress import EvoPressSolver  # noqa: E402
from .greedy import GreedySolver  # noqa: E402
from .ilp import IlpSolver  # noqa: E402
from .lagrangian import LagrangianSolver  # noqa: E402
from .llamacpp_km import LlamaCppKmSolver  # noqa: E402
from .mlx_threshold import MlxThresholdSolver  # noqa: E402
from .nncf_ratio import NncfRatioSolver  # noqa: E402
from .nsga2 import Nsga2Solver  # noqa: E402
from .optuna_search import OptunaSolver  # noqa: E402
from .owl import OwlSolver  # noqa: E402
from .uniform import UniformSolver  # noqa: E402

__all__ = [
    "CAPABILITIES",
    "SOLVERS",
    "BlackBoxSolver",
    "BruteForceSolver",
    "EvoPressSolver",
    "GreedySolver",
    "IlpSolver",
    "LagrangianSolver",
    "LlamaCppKmSolver",
    "MlxThresholdSolver",
    "NncfRatioSolver",
    "Nsga2Solver",
    "OptunaSolver",
    "OwlSolver",
    "Solver",
    "SolverBase",
    "UniformSolver",
    "solvers_with",
]
