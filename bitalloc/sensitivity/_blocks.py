"""The block-scaled weight error shared by ``lim`` and ``zd``.

Blocks come from :func:`bitalloc.nn.blocks.find_blocks`; :func:`unit_blocks` maps every unit to
the block that owns it (or ``None``).

- :func:`block_scaled_error` fills a table with ``score(block(u)) * ||W_hat_f(u) - W_u||_F^2 /
  ||W||_F^2``, where ``W`` is the unit's whole module weight, so the costs of a layer's channel
  slices add up to the layer's relative error. Units outside every block get the mean score
  of the blocks that have one, or ``1.0`` when there is none (the score then degenerates to the
  ``weight_error`` estimator).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from ..nn.blocks import owning_blocks
from .base import Cell, Progress, Scoring

if TYPE_CHECKING:
    from ..search.space import SearchSpace


def unit_blocks(space: SearchSpace, blocks: Iterable[str]) -> dict[str, str | None]:
    """Unit name -> FQN of the block owning the unit's module, or ``None``."""
    return owning_blocks({u.name: u.fqn for u in space.units}, blocks)


def block_scaled_error(
    run: Scoring,
    owner: Mapping[str, str | None],
    scores: Mapping[str, float],
    callback: Progress | None = None,
) -> tuple[np.ndarray, float]:
    """``values[i, j] = s(u_i) * ||Q_j(W_i) - W_i||^2 / ||W_module||^2`` (``inf`` where masked).

    ``s(u)`` is ``scores[owner[u]]``; for a unit outside every block (or in a block without a
    score) it is the mean of ``scores`` (``1.0`` when ``scores`` is empty). Returns the table
    and that fallback score.
    """
    fallback = float(np.mean(list(scores.values()))) if scores else 1.0

    def score(c: Cell) -> float:
        block = owner.get(c.unit.name)
        s = scores.get(block, fallback) if block is not None else fallback
        denom = max(float(c.module.weight.detach().float().pow(2).sum()), 1e-30)
        return s * float(c.delta.pow(2).sum()) / denom

    return run.per_format(score, callback=callback, description=run.estimator.name), fallback
