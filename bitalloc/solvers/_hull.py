"""Vectorised lower convex hulls of MCKP groups and the LP-optimal prefix of hull steps.

Used by :mod:`bitalloc.solvers.lagrangian` (method ``"hull"``): Andrew's monotone chain for
all groups at once, then the upgrade steps sorted by efficiency and taken up to the split step
(Sinha & Zoltners, Oper. Res. 27, 1979; algorithms.md section 8 items 1-6). Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Hulls:
    """Per-group lower convex hulls. Columns are each group's options sorted by cost:
    ``order[g, k]`` is the option at sorted position ``k`` with cost ``cs[g, k]`` and value
    ``vs[g, k]``; ``keep[g, k]`` marks the hull vertices (increasing cost, decreasing value,
    strictly convex)."""

    order: np.ndarray
    cs: np.ndarray
    vs: np.ndarray
    keep: np.ndarray

    def options(self, g: int) -> list[int]:
        """Option indices of group ``g``'s hull vertices, cheapest first."""
        return [int(j) for j in self.order[g, self.keep[g]]]


def lower_hulls(c: np.ndarray, v: np.ndarray) -> Hulls:
    """Lower convex hulls of the points ``(c[g, j], v[g, j])`` (``inf`` = not allowed).

    Andrew's monotone chain for all groups at once: loop over the F sorted columns, keep each
    group's last two vertices in flat arrays; only groups that pop touch their stack.
    """
    n_groups, n_opts = c.shape
    with np.errstate(invalid="ignore"):  # inf - inf where options are absent
        is_sorted = bool((np.diff(c, axis=1) >= 0).all())
    if is_sorted:  # the usual case: formats listed from narrow to wide
        order = np.broadcast_to(np.arange(n_opts), c.shape)
        cs, vs = c, v
    else:
        order = np.argsort(c, axis=1, kind="stable")
        cs = np.take_along_axis(c, order, axis=1)
        vs = np.take_along_axis(v, order, axis=1)
    ct, vt = np.ascontiguousarray(cs.T), np.ascontiguousarray(vs.T)  # contiguous columns
    keep = np.zeros((n_opts, n_groups), dtype=bool)  # transposed while building
    size = np.zeros(n_groups, dtype=np.int64)
    lc, lv, li = np.full(n_groups, np.nan), np.full(n_groups, np.inf), np.zeros(n_groups, int)
    pc, pv, pi = np.full(n_groups, np.nan), np.full(n_groups, np.nan), np.zeros(n_groups, int)
    cols = np.arange(n_opts)
    for k in range(n_opts):
        qc, qv = ct[k], vt[k]
        ok = (qv < lv) & np.isfinite(qc)  # drop absent and dominated points
        with np.errstate(invalid="ignore"):
            turn = (lv - pv) * (qc - lc) >= (qv - lv) * (lc - pc)
        act = np.flatnonzero(ok & ((qc == lc) | ((size >= 2) & turn)))
        while act.size:  # pop the last vertex while it lies on or above the chord to q
            keep[li[act], act] = False
            size[act] -= 1
            lc[act], lv[act], li[act] = pc[act], pv[act], pi[act]
            deep = act[size[act] >= 2]
            if deep.size:  # the new previous vertex: last kept column before the new last
                m = keep[:, deep].T & (cols[None, :] < li[deep][:, None])
                j = n_opts - 1 - np.argmax(m[:, ::-1], axis=1)
                pi[deep], pc[deep], pv[deep] = j, ct[j, deep], vt[j, deep]
            act = act[size[act] >= 2]
            with np.errstate(invalid="ignore"):
                bc, bv, ac, av = lc[act], lv[act], pc[act], pv[act]
                turn = (bv - av) * (qc[act] - bc) >= (qv[act] - bv) * (bc - ac)
            act = act[turn]
        keep[k] = ok
        pc, pv, pi = np.where(ok, lc, pc), np.where(ok, lv, pv), np.where(ok, li, pi)
        lc, lv, li = np.where(ok, qc, lc), np.where(ok, qv, lv), np.where(ok, k, li)
        size += ok
    keep = np.ascontiguousarray(keep.T)
    return Hulls(order, cs, vs, keep)


def hull_greedy(
    c: np.ndarray, v: np.ndarray, capacity: float
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Hull steps sorted by efficiency, applied up to the split step (module doc, step 2)."""
    h = lower_hulls(c, v)
    n_opts = c.shape[1]
    count_k = h.keep.sum(axis=1)  # vertices per group (>= 1)
    gk = np.repeat(np.arange(len(c)), count_k)  # row-major: a group's vertices are adjacent
    ck, vk = h.cs[h.keep], h.vs[h.keep]
    starts = np.r_[0, np.cumsum(count_k)[:-1]]  # first vertex of every group
    same = gk[1:] == gk[:-1]  # step i: vertex i -> i + 1 of one group
    g, dc, dv = gk[:-1][same], np.diff(ck)[same], np.diff(vk)[same]
    key = dv / dc  # -rho, increasing along a group's hull
    for _ in range(n_opts):  # keep it strictly increasing despite rounding
        bad = np.flatnonzero((g[1:] == g[:-1]) & (key[1:] <= key[:-1])) + 1
        if bad.size == 0:
            break
        key[bad] = np.nextafter(key[bad - 1], 0.0)
    room = capacity - float(ck[starts].sum())
    taken, s, used = prefix(key, dc, room)
    count = np.bincount(g[taken], minlength=len(starts))
    lp = float(vk[starts].sum()) + float(dv[taken].sum())
    if s is not None:  # the split step, taken fractionally by the LP
        lp += (room - used) / float(dc[s]) * float(dv[s])
    choice = h.order[h.keep][starts + count]
    info = {"n_steps": len(key), "split": None if s is None else int(g[s])}
    return choice, lp, info


def prefix(
    key: np.ndarray, dc: np.ndarray, room: float, sample: int = 20_000
) -> tuple[np.ndarray, int | None, float]:
    """Steps taken in increasing ``key`` while the prefix sum of ``dc`` fits ``room``.

    Returns ``(taken mask, split step or None, dc used)``. Equal to a full argsort; for many
    steps only a band around the split is sorted: a strided sample of ``sample`` steps
    estimates the split key, every step below the band is taken (checked: they fit), and the
    band is sorted (checked: the split falls inside it; otherwise the full sort is used).
    """
    lo_t, hi_t = -math.inf, math.inf
    if len(key) > 5 * sample:
        ks, ds = key[:: len(key) // sample], dc[:: len(key) // sample]
        o = np.argsort(ks)
        cum = np.cumsum(ds[o]) * (float(dc.sum()) / float(ds.sum()))
        p, w = int(np.searchsorted(cum, room)), int(4 * math.sqrt(len(ks))) + 50
        lo_t = float(ks[o[p - w]]) if p - w > 0 else -math.inf
        hi_t = float(ks[o[p + w]]) if p + w < len(o) else math.inf
    low = key < lo_t
    used = float(dc[low].sum())
    band = np.flatnonzero(~low & (key <= hi_t))
    band = band[np.argsort(key[band])]
    spent = used + np.cumsum(dc[band])
    k = int(np.searchsorted(spent, room, side="right"))
    if used > room or (k == len(band) and hi_t < math.inf):  # the estimate missed: sort all
        return prefix(key, dc, room, sample=len(key))
    low[band[:k]] = True
    return low, (int(band[k]) if k < len(band) else None), (float(spent[k - 1]) if k else used)
