"""Core types (formats, space, budget, table, solution, registry) and the facades.

The package object is callable: ``bitalloc.search(model, calib, budget, ...)`` is the one-shot
facade :func:`bitalloc.search.oneshot.search` (a sub-package and a function cannot share the name
``bitalloc.search`` otherwise, since importing any ``bitalloc.search.*`` module binds it).
"""

import sys
import types
from typing import Any

from .budget import Budget, BudgetKind, LinearConstraint
from .calibration import Calibration
from .formats import QuantFormat
from .solution import Solution, Status
from .space import SearchSpace, Unit
from .table import SensitivityTable

__all__ = [
    "Budget",
    "BudgetKind",
    "LinearConstraint",
    "Calibration",
    "QuantFormat",
    "SearchSpace",
    "SensitivityTable",
    "Solution",
    "Status",
    "Unit",
]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .oneshot import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
