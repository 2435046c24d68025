"""Run the backend contract (tests/contracts/backend.py) over every registered backend."""

from __future__ import annotations

from contracts.backend import BackendContract


class TestBackendContract(BackendContract):
    """All registered backends, and their grid/quantizer variants."""
