"""Backends: materialise a plan on a model (``rtn``: round-to-nearest, reversible)."""

from ..search.registry import Registry
from .base import AppliedPlan, Backend, check_plan

BACKENDS: Registry[Backend] = Registry("backend")

from .rtn import RtnBackend  # noqa: E402  (registers itself)

__all__ = ["BACKENDS", "AppliedPlan", "Backend", "RtnBackend", "check_plan"]
