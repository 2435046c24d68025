"""Core types (formats, space, budget, table, solution, registry) and the facades."""

from .budget import Budget, BudgetKind
from .calibration import Calibration
from .formats import QuantFormat
from .solution import Solution, Status
from .space import SearchSpace, Unit
from .table import SensitivityTable

__all__ = ["Budget", "BudgetKind", "Calibration", "QuantFormat", "SearchSpace",
           "SensitivityTable", "Solution", "Status", "Unit"]
