"""Activation statistics for sparsity: Wanda input norms and OWL outlier ratios (torch).

- Wanda (Sun et al., "A Simple and Effective Pruning Approach for Large Language Models",
  arXiv 2306.11695): score ``S_ij = |W_ij| * ||X_j||_2``, ``||X_j||_2`` the L2 norm of input
  feature ``j`` over all calibration tokens.
- OWL (Yin et al., "Outlier Weighed Layerwise Sparsity", ICML 2024, arXiv 2310.05175): the
  layerwise outlier distribution ``LOD_b`` of a decoder block ``b`` is the fraction of its
  Wanda scores above ``M * mean`` (``M`` = ``hyper_m``, 5), over all linears of the block.
  :class:`bitalloc.solvers.owl.OwlSolver` (numpy) turns the ratios into per-layer sparsities.

The solver reads the ratios from ``table.meta["outlier_ratios"]`` (one per unit, see
:func:`with_outlier_ratios`) or from its ``outlier_ratios`` option.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..nn.units import unit_modules, unit_weight
from ..search.table import SensitivityTable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..search.space import SearchSpace

_BLOCK = re.compile(r"^(.*?\b(?:layers|layer|h|blocks|block)\.\d+)\.")
OUTLIER_KEY = "outlier_ratios"


def input_norms(model: nn.Module, fqns: Iterable[str], calib: Any) -> dict[str, torch.Tensor]:
    """L2 norm of every input feature of the ``nn.Linear`` modules ``fqns`` over ``calib``.

    One forward pass per calibration batch (``calib.forward``); returns FQN -> float32 ``[in]``
    (:func:`bitalloc.nn.input_moments`).
    """
    from ..nn import input_moments
    from ..search.calibration import as_calibration

    moments = input_moments(model, fqns, as_calibration(calib), min_tokens=1)
    return {n: m.l2_norm for n, m in moments.items()}


def block_of(name: str) -> str:
    """The decoder block a unit belongs to (``model.layers.3`` for ``model.layers.3.mlp.up``);
    the module FQN itself when the name has no ``layers.N``-style component."""
    m = _BLOCK.match(name)
    return m.group(1) if m else name


def outlier_ratios(
    model: nn.Module,
    space: SearchSpace,
    calib: Any,
    *,
    hyper_m: float = 5.0,
    per: str = "block",
) -> np.ndarray:
    """OWL's ``LOD``: fraction of Wanda scores above ``hyper_m * mean`` (one per unit).

    Args:
        hyper_m: outlier threshold ``M`` as a multiple of the mean score (OWL ``Hyper_m``).
        per: ``"block"`` (OWL: all linears of a decoder block pooled; every unit of the block
            gets the block's ratio) or ``"unit"`` (each unit alone).
    """
    import torch

    if per not in ("block", "unit"):
        raise ValueError(f"`per` must be 'block' or 'unit', got {per!r}")
    if not hyper_m > 0:
        raise ValueError(f"`hyper_m` must be positive, got {hyper_m!r}")
    modules = unit_modules(model, space.units)
    norms = input_norms(model, sorted({u.fqn for u in space.units}), calib)
    keys = [block_of(u.fqn) if per == "block" else u.name for u in space.units]
    pooled: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for u, key in zip(space.units, keys):
            w = unit_weight(modules[u.name], u).detach().float()
            score = w.abs().reshape(w.shape[0], -1) * norms[u.fqn].unsqueeze(0)
            pooled.setdefault(key, []).append(score.reshape(-1))
    ratio = {}
    for key, parts in pooled.items():
        a = torch.cat(parts).double()
        ratio[key] = float((a > hyper_m * a.mean()).double().mean())
    return np.array([ratio[k] for k in keys], dtype=np.float64)


def with_outlier_ratios(table: SensitivityTable, ratios: Any) -> SensitivityTable:
    """A copy of ``table`` whose ``meta["outlier_ratios"]`` holds ``ratios`` (one per unit)."""
    r = np.asarray(ratios, dtype=np.float64).reshape(-1)
    if r.shape != (len(table.space),) or not np.isfinite(r).all():
        raise ValueError(
            f"`ratios` must be {len(table.space)} finite values (one per unit), got {r.shape}"
        )
    meta = {**table.meta, OUTLIER_KEY: [float(v) for v in r]}
    return SensitivityTable(table.space, table.values, table.estimator, meta)
