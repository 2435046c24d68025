"""Hessian trace: ``cost(u, f) = Tr(H_u) / n_u * ||Q_f(W_u) - W_u||_F^2``.

HAWQ-V2's sensitivity (Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization of
Neural Networks", NeurIPS 2020, Sec. 3: ``Omega_i = Tr(H_i)/n_i * ||Q(W_i) - W_i||^2``), with
``H_u`` the block of the loss Hessian over the unit's ``n_u`` weights. The trace comes from
Hutchinson's estimator as in PyHessian (Yao et al., "PyHessian: Neural Networks Through the Lens
of the Hessian", 2020): ``Tr(H_u) ~ mean_k v_k^T H v_k`` restricted to the unit's weights, with
Rademacher probes ``v_k`` drawn over **all** unit weights at once and ``H v`` by double
backward (``g = autograd.grad(L, W, create_graph=True)``, ``Hv = autograd.grad(g . v, W)``).
One probe serves every unit; a channel-slice unit restricts ``v`` and ``Hv`` to its rows, so
it gets its own trace (the slices' traces add up to the layer's).

``L`` is the mean loss over the first ``batches`` calibration batches; their graph is built
once and every probe reuses it (PyHessian's single-batch mode). Probing stops once the relative
change of the running total trace ``|T_k - T_{k-1}| / (|T_{k-1}| + 1e-6)`` falls below ``tol``
(after ``min_probes``) or at ``max_probes``. Away from a minimum a unit's trace can come out
negative (indefinite Hessian, or probe noise); it is clamped to 0 with a warning and listed
in ``meta["negative_trace_units"]``. Per-unit estimates are far noisier than the total (the
probe variance is ``2 * sum_{i != j} H_ij^2`` over the unit's block): on SmolLM2-135M, 8 probes
still left about 14% of the units negative, so check ``meta["trace_stderr"]`` (standard error
of each unit's trace over the probes) and raise ``max_probes`` before trusting small traces.

Double backward needs attention kernels with second derivatives: load Hugging Face models with
``attn_implementation="eager"`` (the CPU SDPA kernel has none). One probe on SmolLM2-135M at
1x512 tokens costs about 20 s and 8 GB on CPU.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..nn.modes import grad_scope
from ..search.table import SensitivityTable
from . import ESTIMATORS
from ._grad import (
    batch_loss,
    check_finite,
    unique_weights,
    unit_rows,
    weight_grads,
    weight_slot,
)
from .base import Cell, EstimatorBase, Progress, Scoring

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..search.calibration import Calibration
    from ..search.space import SearchSpace

log = logging.getLogger(__name__)

EAGER_HINT = (
    "the model does not support double backward (Hessian-vector products): {err}. For Hugging "
    'Face models load with attn_implementation="eager" (e.g. bitalloc.models.load(name, '
    'attn_implementation="eager")); the SDPA/flash attention kernels have no second derivative'
)


@ESTIMATORS.register("hessian_trace")
@dataclass(frozen=True, slots=True)
class HessianTraceEstimator(EstimatorBase):
    """Hutchinson Hessian trace per unit times the squared weight error (HAWQ-V2).

    Args:
        max_probes: most Rademacher probes (Hessian-vector products).
        min_probes: fewest probes before the ``tol`` test may stop.
        tol: stop when the relative change of the total trace estimate falls below it
            (0 runs all ``max_probes``).
        batches: calibration batches in the Hessian's loss (their mean loss; graph kept).
        seed: seed of the ``torch.Generator`` drawing the probes.
    """

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = True
    max_probes: int = 8
    min_probes: int = 2
    tol: float = 1e-2
    batches: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for field, low in (("max_probes", 1), ("min_probes", 1), ("batches", 1), ("seed", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{field}` must be an int >= {low}, got {value!r}")
        if self.min_probes > self.max_probes:
            raise ValueError(
                f"`min_probes`={self.min_probes} must not exceed `max_probes`={self.max_probes}"
            )
        if not isinstance(self.tol, (int, float)) or not self.tol >= 0:
            raise ValueError(f"`tol` must be a number >= 0, got {self.tol!r}")

    def score_table(
        self, run: Scoring, model: nn.Module, callback: Progress | None
    ) -> SensitivityTable:
        space = run.space
        try:
            traces, stderr, info = self._traces(model, run.modules, space, run.calib, callback)
        except RuntimeError as err:
            if "derivative for" in str(err) and "not implemented" in str(err):
                raise ValueError(EAGER_HINT.format(err=str(err).splitlines()[0])) from err
            raise
        negative = [u.name for u, t in zip(space.units, traces) if t < 0]
        if negative:
            log.warning(
                "negative Hessian trace clamped to 0 for %d of %d units (e.g. %s); raise "
                "`max_probes` (used %d)",
                len(negative),
                len(space),
                negative[:3],
                info["probes"],
            )

        def score(c: Cell) -> float:
            per_weight = max(traces[c.i], 0.0) / c.unit.numel
            return per_weight * float(c.delta.double().square().sum())

        return run.table(
            run.per_format(score),
            **info,
            traces={u.name: float(t) for u, t in zip(space.units, traces)},
            trace_stderr={u.name: float(e) for u, e in zip(space.units, stderr)},
            negative_trace_units=negative,
        )

    def _traces(
        self,
        model: nn.Module,
        modules: dict[str, nn.Module],
        space: SearchSpace,
        calib: Calibration,
        callback: Progress | None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Hutchinson ``Tr(H_u)`` per unit, its standard error, and probe statistics."""
        import torch

        fqns, weights = unique_weights(modules, space)
        slot = weight_slot(modules, weights)
        n = min(self.batches, len(calib.batches))
        gen = torch.Generator().manual_seed(self.seed)
        sums, squares = np.zeros(len(space)), np.zeros(len(space))
        probe_times: list[float] = []
        rel, previous = float("inf"), None
        with grad_scope(model, weights):
            t0 = time.perf_counter()
            loss = sum(batch_loss(model, calib, b) for b in range(n)) / n
            grads = weight_grads(loss, weights, fqns, create_graph=True)
            for g, fqn in zip(grads, fqns):
                check_finite(g.detach(), fqn)
            graph_time = time.perf_counter() - t0
            for k in range(self.max_probes):
                t0 = time.perf_counter()
                vs = [_rademacher(w, gen) for w in weights]
                hvs = _hvp(grads, weights, vs, retain=k + 1 < self.max_probes)
                for hv, fqn in zip(hvs, fqns):
                    check_finite(hv, fqn)
                for i, u in enumerate(space.units):
                    s = slot[u.name]
                    prod = unit_rows(vs[s], u.channels) * unit_rows(hvs[s], u.channels)
                    sample = float(prod.sum(dtype=torch.float64))
                    sums[i] += sample
                    squares[i] += sample * sample
                probe_times.append(time.perf_counter() - t0)
                total = float(sums.sum()) / (k + 1)
                if previous is not None:
                    rel = abs(total - previous) / (abs(previous) + 1e-6)
                previous = total
                if callback is not None:
                    callback(k + 1, self.max_probes, "hessian probes")
                if k + 1 >= self.min_probes and rel < self.tol:
                    break
        probes = len(probe_times)
        info = {
            "batches": n,
            "probes": probes,
            "rel_change": rel if probes > 1 else None,  # None: a single probe
            "graph_time_s": round(graph_time, 3),
            "probe_time_s": round(sum(probe_times) / probes, 4),
        }
        mean = sums / probes
        var = np.maximum(squares / probes - mean**2, 0.0) / max(probes - 1, 1)
        return mean, np.sqrt(var), info


def _rademacher(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Entries +-1 with probability 1/2 each, drawn on the CPU (same draws on any device)."""
    import torch

    v = torch.randint(0, 2, w.shape, generator=gen, dtype=torch.float32).mul_(2).sub_(1)
    return v.to(device=w.device, dtype=w.dtype)


def _hvp(
    grads: tuple[torch.Tensor, ...],
    weights: list[torch.Tensor],
    vs: list[torch.Tensor],
    retain: bool,
) -> list[torch.Tensor]:
    """``H v`` by a second backward through ``g . v``; weights without curvature give 0."""
    import torch

    terms = [(g * v).sum() for g, v in zip(grads, vs) if g.requires_grad]
    if not terms:  # the loss is linear in every weight
        return [torch.zeros_like(w) for w in weights]
    hvs = torch.autograd.grad(sum(terms), weights, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(w) if h is None else h.detach() for h, w in zip(hvs, weights)]
