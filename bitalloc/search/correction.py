"""Correct an additive sensitivity table with measured KL of a few dozen plans.

A table predicts a plan's loss as ``sum_i T[i, f_i]``. At low bits that sum under-prices the
narrow formats and the interaction of many quantized layers, and an exact solver exploits
exactly those errors. The correction multiplies each entry by a factor of its format's bit
width and/or of its unit's layer type (``q_proj``, ``down_proj``, ...):

    KL(plan) ~ sum_i c[bits(f_i)] * d[type(i)] * T[i, f_i]

fitted to measured KLs ``y_p`` by non-negative least squares on relative errors
``sum_p ((prediction_p - y_p) / y_p)^2``, with a relative ridge pull of every factor towards the
single best common scale (so a bit width that few plans use keeps that scale instead of a wild
value); the ridge strength is chosen by leave-one-out error. Every factor stays within
``TRUST`` (4x) of its prior: plans measured near the optimum cannot tell the fit what a layer
type costs far from it, and an unbounded fit drove some factors to 0, which the exact
re-solve then exploited (benchmarks/RESULTS.md "Anchors").
``kind`` picks the model: ``"scale"`` (one factor: only rescales, the plan does not change),
``"bits"``, ``"type"`` or ``"bits+type"`` (the product, fitted by alternating NNLS);
:func:`fit_correction` with ``kind="auto"`` keeps the one with the lowest leave-one-out error.
The corrected table is projected to stay monotone in bits for every unit whose raw entries were.
This is the measured correction of the additive proxy that llama.cpp's ``--target-bpw`` and
EvoPress's GGUF search apply implicitly by scoring real files (anchors.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .solution import Solution
from .table import SensitivityTable

KINDS = ("scale", "bits", "type", "bits+type")
_SLICE = re.compile(r"\[\d+:\d+\]$")
_RIDGES = (0.0, 0.01, 0.1, 1.0)
TRUST = 4.0  # no factor moves further than this from the common scale (or 1 for types)


def layer_type(name: str) -> str:
    """``q_proj`` for ``model.layers.3.self_attn.q_proj`` (channel slices ``[a:b]`` dropped)."""
    return _SLICE.sub("", name).rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Correction:
    """Fitted multipliers of a table's entries (see the module doc)."""

    kind: str
    bit_factors: dict[int, float] = field(default_factory=dict)
    type_factors: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0
    ridge: float = 0.0
    loo_error: float = float("nan")
    fit_error: float = float("nan")
    n_plans: int = 0

    def factors(self, table: SensitivityTable) -> np.ndarray:
        """The multiplier of every entry ``[units, formats]``."""
        bits = np.array([f.bits for f in table.space.formats])
        types = [layer_type(u.name) for u in table.space.units]
        cb = np.array([self.bit_factors.get(int(b), self.scale) for b in bits])
        dt = np.array([self.type_factors.get(t, 1.0) for t in types])
        if self.kind == "scale":
            return np.full(table.values.shape, self.scale)
        if self.kind == "bits":
            return np.broadcast_to(cb, table.values.shape).copy()
        if self.kind == "type":
            return np.broadcast_to((self.scale * dt)[:, None], table.values.shape).copy()
        return dt[:, None] * cb[None, :]

    def apply(self, table: SensitivityTable) -> SensitivityTable:
        """The corrected table (same space; ``meta["correction"]`` records this fit)."""
        raw = table.values
        values = np.where(np.isfinite(raw), raw * self.factors(table), np.inf)
        values = _keep_monotone(raw, values, table)
        meta = {**table.meta, "correction": self.to_dict()}
        return SensitivityTable(
            space=table.space, values=values, estimator=table.estimator, meta=meta
        )

    def predict(self, table: SensitivityTable, plans: Sequence[Solution]) -> np.ndarray:
        """Corrected predicted loss of each plan."""
        corrected = self.apply(table).values
        return np.array([_plan_sum(corrected, table, p) for p in plans])

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "bit_factors": {str(k): v for k, v in self.bit_factors.items()},
            "type_factors": dict(self.type_factors),
            "scale": self.scale,
            "ridge": self.ridge,
            "loo_error": self.loo_error,
            "fit_error": self.fit_error,
            "n_plans": self.n_plans,
        }


def fit_correction(
    table: SensitivityTable,
    plans: Sequence[Solution],
    measured: Sequence[float],
    kind: str = "auto",
) -> Correction:
    """Fit the correction of ``table`` to the measured KL of ``plans`` (``kind`` in
    :data:`KINDS` or ``"auto"``: the lowest leave-one-out relative error, ties to the
    simpler model). Needs at least 4 plans with positive finite measurements."""
    if kind != "auto" and kind not in KINDS:
        raise ValueError(f"`kind` must be 'auto' or one of {', '.join(KINDS)}, got {kind!r}")
    y = np.asarray(measured, dtype=np.float64)
    if len(plans) != len(y):
        raise ValueError(f"{len(plans)} plans but {len(y)} measurements")
    if len(y) < 4 or not np.all(np.isfinite(y)) or not np.all(y > 0):
        raise ValueError("the correction needs >= 4 plans with finite, positive measured KL")
    feats = _Features.build(table, plans)
    kinds = KINDS if kind == "auto" else (kind,)
    fits = [_best_ridge(feats, y, k) for k in kinds]
    best = min(fits, key=lambda c: (round(c.loo_error, 6), KINDS.index(c.kind)))
    return best


# ---------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class _Features:
    """Per plan, the table sums split by (bit width, layer type)."""

    x: np.ndarray  # [plans, bit levels, types]
    bits: tuple[int, ...]
    types: tuple[str, ...]

    @classmethod
    def build(cls, table: SensitivityTable, plans: Sequence[Solution]) -> _Features:
        bits = tuple(sorted({f.bits for f in table.space.formats}))
        types = tuple(sorted({layer_type(u.name) for u in table.space.units}))
        col = {k: j for j, k in enumerate(table.space.keys)}
        unit_type = [types.index(layer_type(u.name)) for u in table.space.units]
        fbits = [bits.index(f.bits) for f in table.space.formats]
        x = np.zeros((len(plans), len(bits), len(types)))
        for p, plan in enumerate(plans):
            if [u.name for u in plan.space.units] != [u.name for u in table.space.units]:
                raise ValueError(f"plan {p} is for another search space than the table")
            for i, key in enumerate(plan.choice):
                j = col[key]
                x[p, fbits[j], unit_type[i]] += table.values[i, j]
        if not np.all(np.isfinite(x)):
            raise ValueError("a plan uses a format its table marks as not allowed (inf)")
        return cls(x, bits, types)


def _nnls_ridge(a: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    """``argmin ||(a c - y) / y||^2 + lam * n * ||(c - prior) / prior||^2`` over factors ``c``
    within ``[prior / TRUST, prior * TRUST]`` (``c >= 0`` where the prior is 0)."""
    from scipy.optimize import lsq_linear

    w = 1.0 / y
    rows = a * w[:, None]
    n, k = a.shape
    scale = np.where(prior > 0, prior, 1.0)
    reg = np.sqrt(lam * n) * np.diag(1.0 / scale)
    aa = np.vstack([rows, reg])
    bb = np.concatenate([np.ones(n), np.sqrt(lam * n) * prior / scale])
    lo = np.where(prior > 0, prior / TRUST, 0.0)
    hi = np.where(prior > 0, prior * TRUST, np.inf)
    return lsq_linear(aa, bb, bounds=(lo, hi), method="bvls").x


def _solve(feats: _Features, y: np.ndarray, kind: str, lam: float) -> tuple[np.ndarray, ...]:
    """Factors ``(scale, c per bit level, d per type)`` for one model and ridge."""
    x = feats.x
    total = x.sum(axis=(1, 2))
    s0 = float(_nnls_ridge(total[:, None], y, np.zeros(1), 0.0)[0]) or 1.0
    nb, nt = x.shape[1], x.shape[2]
    c, d = np.full(nb, s0), np.ones(nt)
    if kind == "bits":
        c = _nnls_ridge(x.sum(axis=2), y, np.full(nb, s0), lam)
    elif kind == "type":
        d = _nnls_ridge(x.sum(axis=1) * s0, y, np.ones(nt), lam)
    elif kind == "bits+type":
        for _ in range(25):
            c = _nnls_ridge(np.einsum("pbt,t->pb", x, d), y, np.full(nb, s0), lam)
            d = _nnls_ridge(np.einsum("pbt,b->pt", x, c), y, np.ones(nt), lam)
            norm = float(np.mean(d)) or 1.0
            d, c = d / norm, c * norm
    return np.array([s0]), c, d


def _predict(feats: _Features, kind: str, s0: float, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    if kind == "scale":
        return s0 * feats.x.sum(axis=(1, 2))
    if kind == "type":
        return s0 * np.einsum("pbt,t->p", feats.x, d)
    return np.einsum("pbt,b,t->p", feats.x, c, d)


def _rel_error(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(((pred - y) / y) ** 2)))


def _best_ridge(feats: _Features, y: np.ndarray, kind: str) -> Correction:
    ridges = (0.0,) if kind == "scale" else _RIDGES
    best: Correction | None = None
    for lam in ridges:
        loo = []
        for k in range(len(y)):
            keep = np.arange(len(y)) != k
            sub = _Features(feats.x[keep], feats.bits, feats.types)
            s0, c, d = _solve(sub, y[keep], kind, lam)
            one = _Features(feats.x[k : k + 1], feats.bits, feats.types)
            loo.append(float(_predict(one, kind, float(s0[0]), c, d)[0]))
        s0, c, d = _solve(feats, y, kind, lam)
        fit = _predict(feats, kind, float(s0[0]), c, d)
        cand = Correction(
            kind=kind,
            bit_factors={b: float(v) for b, v in zip(feats.bits, c)} if "bits" in kind else {},
            type_factors={t: float(v) for t, v in zip(feats.types, d)} if "type" in kind else {},
            scale=float(s0[0]),
            ridge=lam,
            loo_error=_rel_error(np.array(loo), y),
            fit_error=_rel_error(fit, y),
            n_plans=len(y),
        )
        if best is None or cand.loo_error < best.loo_error:
            best = cand
    assert best is not None
    return best


# ---------------------------------------------------------------------- helpers
def _plan_sum(values: np.ndarray, table: SensitivityTable, plan: Solution) -> float:
    col = {k: j for j, k in enumerate(table.space.keys)}
    return float(sum(values[i, col[k]] for i, k in enumerate(plan.choice)))


def _keep_monotone(raw: np.ndarray, values: np.ndarray, table: SensitivityTable) -> np.ndarray:
    """For units whose raw entries never rise with bits, a running minimum from the narrowest
    format (by bits per weight) up, so corrected entries do not rise either."""
    out = values.copy()
    for i, u in enumerate(table.space.units):
        cols = [j for j in range(raw.shape[1]) if np.isfinite(raw[i, j])]
        cols.sort(key=lambda j: table.space.formats[j].bits_per_weight(u.shape))
        r = raw[i, cols]
        if len(cols) < 2 or np.any(np.diff(r) > 0):
            continue
        out[i, cols] = np.minimum.accumulate(values[i, cols])
    return out
