"""Offline pretrained models: load by built-in name or local folder, describe, fingerprint.

``import bitalloc.models`` is cheap: torch and transformers are imported when a function runs.

>>> model, tok = load("smollm2-135m")          # doctest: +SKIP
>>> task(model)                                # doctest: +SKIP
'causal_lm'
"""

from __future__ import annotations

from bitalloc.models.cache import cache_dir
from bitalloc.models.fingerprint import fingerprint
from bitalloc.models.registry import ModelInfo, Task, info, load, names, task

__all__ = ["ModelInfo", "Task", "cache_dir", "fingerprint", "info", "load", "names", "task"]
