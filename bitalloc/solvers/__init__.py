"""Solvers: pick one format per unit (tie groups share one) under a memory budget.

Every solver implements :class:`~bitalloc.solvers.base.Solver` (``solve(table, budget) ->
Solution``), is a frozen dataclass whose fields are its options, and registers itself in
:data:`SOLVERS` by name. numpy/scipy/pulp only, never torch.
"""

from __future__ import annotations

from ..search.registry import Registry
from .base import Solver

SOLVERS: Registry[Solver] = Registry("solver")
"""Registered solvers by name: ``SOLVERS.get("ilp", time_limit_s=10)``."""

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
    "SOLVERS",
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
    "UniformSolver",
]
