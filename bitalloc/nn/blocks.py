"""The repeated blocks of a model (decoder layers), found from module names.

- :func:`find_blocks`: the children of the model's largest ``nn.ModuleList`` whose entries own
  at least one of the given modules (``model.layers.0``, ``transformer.h.3``, ...), never from
  hard-coded paths. A model without such a list (a plain ``nn.Sequential``) has no blocks.
- :func:`owning_blocks`: which block owns each module (or ``None``).
- :func:`n_batches`: how many calibration batches a ``max_batches``-style option allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def owns(block: str, fqn: str) -> bool:
    """Whether module ``fqn`` is block ``block`` or inside it."""
    return fqn == block or fqn.startswith(block + ".")


def find_blocks(model: nn.Module, fqns: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """``[(block FQN, block module), ...]``: the entries of the largest owning ModuleList.

    Candidates are the ``nn.ModuleList``s of ``model`` whose entries contain at least one of
    ``fqns`` and that are not nested inside an entry of another candidate (so the experts list
    of an MoE layer never beats the list of decoder layers holding it). The candidate with the
    most entries wins (the first in ``named_modules`` order on a tie); all its entries are
    returned in order, also those that own none of ``fqns``. ``[]`` when there is no candidate.
    """
    from torch import nn

    names = list(fqns)
    candidates: list[tuple[str, list[tuple[str, nn.Module]]]] = []
    for list_name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList):
            continue
        prefix = f"{list_name}." if list_name else ""
        entries = [(f"{prefix}{i}", child) for i, child in enumerate(mod)]
        if any(owns(b, f) for b, _ in entries for f in names):
            candidates.append((list_name, entries))
    outer = [
        entries
        for list_name, entries in candidates
        if not any(owns(b, list_name) for _, other in candidates for b, _ in other)
    ]
    return max(outer, key=len, default=[])


def owning_blocks(fqns: Mapping[str, str], blocks: Iterable[str]) -> dict[str, str | None]:
    """``{key: FQN of the block owning module fqns[key], or None}`` (keys in order)."""
    block_names = list(blocks)
    return {key: next((b for b in block_names if owns(b, fqn)), None) for key, fqn in fqns.items()}


def n_batches(calib: Any, limit: int | None, option: str = "max_batches") -> int:
    """How many of ``calib.batches`` to use: all (``limit=None``) or at most ``limit`` (>= 1);
    ``ValueError`` naming ``option`` otherwise."""
    if limit is None:
        return len(calib.batches)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"`{option}` must be a positive int or None, got {limit!r}")
    return min(limit, len(calib.batches))
