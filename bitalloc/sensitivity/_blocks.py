"""Decoder-block discovery and the block-scaled weight error shared by ``lim`` and ``zd``.

- :func:`find_blocks` returns the repeated blocks of a model: the children of its largest
  ``nn.ModuleList`` whose entries own at least one searched unit (``model.layers.0``,
  ``transformer.h.3``, ...), found from module FQNs, never from hard-coded paths. A model
  without such a list (a plain ``nn.Sequential``) has no blocks.
- :func:`unit_blocks` maps every unit to the block that owns it (or ``None``).
- :func:`block_scaled_error` fills a table with ``score(block(u)) * ||W_hat_f(u) - W_u||_F^2 /
  ||W||_F^2``, where ``W`` is the unit's whole module weight, so the costs of a layer's channel
  slices add up to the layer's relative error. Units outside every block get the mean score
  of the blocks that have one, or ``1.0`` when there is none (the score then degenerates to the
  ``weight_error`` estimator).
- :func:`n_batches` validates a ``max_batches`` option.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from .base import Deltas, Progress

if TYPE_CHECKING:
    from torch import nn

    from ..search.calibration import Calibration
    from ..search.space import SearchSpace


def _owns(block: str, fqn: str) -> bool:
    return fqn == block or fqn.startswith(block + ".")


def find_blocks(model: nn.Module, fqns: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """``[(block FQN, block module), ...]``: the entries of the largest unit-owning ModuleList.

    Candidates are the ``nn.ModuleList``s of ``model`` whose entries contain at least one of
    ``fqns`` and that are not nested inside an entry of another candidate (so the experts list
    of an MoE layer never beats the list of decoder layers holding it). The candidate with the
    most entries wins (the first in ``named_modules`` order on a tie); all its entries are
    returned in order, also those that own no unit. ``[]`` when there is no candidate.
    """
    from torch import nn

    names = list(fqns)
    candidates: list[tuple[str, list[tuple[str, nn.Module]]]] = []
    for list_name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList):
            continue
        prefix = f"{list_name}." if list_name else ""
        entries = [(f"{prefix}{i}", child) for i, child in enumerate(mod)]
        if any(_owns(b, f) for b, _ in entries for f in names):
            candidates.append((list_name, entries))
    outer = [
        entries
        for list_name, entries in candidates
        if not any(_owns(b, list_name) for _, other in candidates for b, _ in other)
    ]
    return max(outer, key=len, default=[])


def unit_blocks(space: SearchSpace, blocks: Iterable[str]) -> dict[str, str | None]:
    """Unit name -> FQN of the block owning the unit's module, or ``None``."""
    block_names = list(blocks)
    out: dict[str, str | None] = {}
    for u in space.units:
        out[u.name] = next((b for b in block_names if _owns(b, u.fqn)), None)
    return out


def block_scaled_error(
    space: SearchSpace,
    modules: Mapping[str, nn.Module],
    deltas: Deltas,
    owner: Mapping[str, str | None],
    scores: Mapping[str, float],
    callback: Progress | None = None,
    description: str = "block score",
) -> tuple[np.ndarray, float]:
    """``values[i, j] = s(u_i) * ||Q_j(W_i) - W_i||^2 / ||W_module||^2`` (``inf`` where masked).

    ``s(u)`` is ``scores[owner[u]]``; for a unit outside every block (or in a block without a
    score) it is the mean of ``scores`` (``1.0`` when ``scores`` is empty). Returns the table
    and that fallback score.
    """
    fallback = float(np.mean(list(scores.values()))) if scores else 1.0
    values = np.full((len(space), len(space.formats)), np.inf)
    mask = space.mask
    for i, u in enumerate(space.units):
        block = owner.get(u.name)
        s = scores.get(block, fallback) if block is not None else fallback
        denom = max(float(modules[u.name].weight.detach().float().pow(2).sum()), 1e-30)
        for j in range(len(space.formats)):
            if mask[i, j]:
                values[i, j] = s * float(deltas(i, j).pow(2).sum()) / denom
        if callback is not None:
            callback(i + 1, len(space), description)
    return values, fallback


def n_batches(calib: Calibration, limit: int | None) -> int:
    """How many calibration batches to use: all (``limit=None``) or at most ``limit`` (>= 1)."""
    if limit is None:
        return len(calib.batches)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"`max_batches` must be a positive int or None, got {limit!r}")
    return min(limit, len(calib.batches))
