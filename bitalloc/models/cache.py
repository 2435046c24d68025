"""Where bitalloc keeps derived files (float copies of models, extracted corpora).

The root is ``$BITALLOC_CACHE_DIR`` when set, else ``~/.cache/bitalloc``. Everything under it
can be deleted at any time; it is rebuilt on demand.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "BITALLOC_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """Return ``<cache root>/<parts...>`` (not created)."""
    root = os.environ.get(ENV_VAR) or os.path.join("~", ".cache", "bitalloc")
    return Path(root).expanduser().joinpath(*parts)
