"""The defaults every entry point shares: the Python facades, the CLI and the studies.

Import-free on purpose, so ``bitalloc --help`` stays fast.
"""

from __future__ import annotations

DEFAULT_FORMATS = (
    "int2-g64",
    "int3-pc",
    "int3-g64",
    "int4-pc",
    "int4-g64",
    "int5-g64",
    "int6-g64",
    "int8-pc",
)
"""The menu of the default search (``int3-pc`` costs 3.03 bits on 576-wide rows, ``int3-g64``
3.30); measured on SmolLM2 in benchmarks/RESULTS.md."""

DEFAULT_ESTIMATOR = "auto"
"""``fisher`` for causal LMs with a calibration loss, ``weight_error`` otherwise."""


def parse_tie(text: str) -> str | list[str] | None:
    """A ``tie`` option from text: ``"auto"``, ``"none"`` (-> ``None``) or comma-separated tie
    regexes (``SearchSpace.from_model(tie=...)``)."""
    if text == "none":
        return None
    if text == "auto":
        return "auto"
    return [t for t in text.split(",") if t]
