"""Anchor baseline: llama.cpp's Q*_K_M tensor-type mixing rule, fitted to a budget."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..search.budget import Budget
from ..search.solution import Solution, Status
from ..search.space import SearchSpace
from ..search.table import SensitivityTable
from . import SOLVERS
from ._two_precision import (
    check_optional_key,
    format_index,
    need,
    nominal_bits,
    snap,
    width_order,
)
from .base import SolverBase, infeasible, make_solution, provenance, start

LAYER_PATTERN = r"(?:^|\.)(?:layers?|h|blocks?)\.(\d+)\."
ATTN_V_PATTERN = r"v_proj|attn_v|value|qkv|c_attn|kv_b_proj"
FFN_DOWN_PATTERN = r"down_proj|ffn_down|mlp\.c_proj|fc2|(?<!attention\.)output\.dense|\.w2$"
ROLES = ("attn_v", "ffn_down")


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp ``use_more_bits``: first and last eighth of layers, every third in between."""
    eighth = n_layers // 8
    return i_layer < eighth or i_layer >= 7 * n_layers // 8 or (i_layer - eighth) % 3 == 2


@SOLVERS.register("llamacpp_km")
@dataclass(frozen=True)
class LlamaCppKmSolver(SolverBase):
    """llama.cpp's Q4_K_M / Q5_K_M mixing rule: attn_v and ffn_down bumped on chosen layers.

    The rule (``llama_tensor_get_type_impl`` in ggml-org/llama.cpp src/llama-quant.cpp; see
    reference/anchors.md section 6): every tensor takes the ftype's base type (Q4_K for
    Q4_K_M, Q5_K for Q5_K_M) except ``attn_v`` (fused ``attn_qkv`` and ``attn_kv_b`` are classed
    with it) and ``ffn_down``, which take Q6_K when ``use_more_bits(i, n)`` holds, with::

        use_more_bits(i, n) = i < n/8 || i >= 7*n/8 || (i - n/8) % 3 == 2   (C integer division)

        i.e. the first and last eighth of the layers and every third layer in between.
    ``i`` and ``n`` are llama.cpp's per-role counters (``i_attention_wv``/``n_attention_wv``
    for attn_v, the ffn_down layer index/count): here ``i`` is the rank of the unit's layer
    index among the distinct layer indices of the units with that role and ``n`` their number
    (the layer index and the layer count for a whole model).

    Units are classified by regex search on their module FQN: the first capture group of
    ``layer_pattern`` is the layer index; ``attn_v_pattern`` / ``ffn_down_pattern`` give the
    role (options, so any naming scheme works). Units matching neither, or without a layer
    index, take the base format. The output-tensor and 70B/MoE bumps of llama.cpp are not
    applied (the searched space normally excludes ``lm_head`` and embeddings).

    Fitting a budget (our addition; llama.cpp has no budget): formats are ordered by nominal
    width (exact bits per weight averaged over the units, :mod:`._two_precision`); candidate
    (base, high) pairs are (f_k, f_k+1) for consecutive formats, and the "pure" pairs (f_k,
    f_k) (llama.cpp ``--pure``: no bump). A tie group takes the wider of its members' formats
    (high if any member is bumped); a group that cannot take its format takes the closest
    allowed one. The exact cost of every candidate plan (ties included) is computed and the
    fitting candidate of largest cost is kept (equal cost -> lower predicted loss, then the
    narrower pair). If none fits but the cheapest plan does, every group takes its cheapest
    format. ``base``/``high`` restrict the candidates (``base`` only: (base, next) or (base,
    base); ``high`` only: (previous, high); both: that pair), and no fitting candidate is then
    INFEASIBLE. ``meta["rule"]`` records the pair and the bumped layers.
    Status FEASIBLE.

    Args:
        base: force the base format (key in the space).
        high: force the bumped format (key in the space; wider than ``base``).
        layer_pattern: regex whose first group is the layer index.
        attn_v_pattern: regex marking attention-value (and fused qkv) projections.
        ffn_down_pattern: regex marking FFN down projections.

    Example:
        >>> LlamaCppKmSolver().solve(table, Budget.avg_bits(4.5)).meta["rule"]["high"]
        'int6-g64'
    """

    base: str | None = None
    high: str | None = None
    layer_pattern: str = LAYER_PATTERN
    attn_v_pattern: str = ATTN_V_PATTERN
    ffn_down_pattern: str = FFN_DOWN_PATTERN

    name: ClassVar[str]

    def __post_init__(self) -> None:
        check_optional_key(self.base, "base")
        check_optional_key(self.high, "high")
        for arg in ("layer_pattern", "attn_v_pattern", "ffn_down_pattern"):
            pat = getattr(self, arg)
            if not isinstance(pat, str):
                raise TypeError(f"`{arg}` must be a regex string, got {pat!r}")
            try:
                compiled = re.compile(pat)
            except re.error as e:
                raise ValueError(f"`{arg}` is not a valid regex: {e}") from None
            if arg == "layer_pattern" and compiled.groups < 1:
                raise ValueError("`layer_pattern` needs a capture group for the layer index")

    # ------------------------------------------------------------------ the rule
    def roles(self, space: SearchSpace) -> list[tuple[str | None, int | None]]:
        """Per unit ``(role, layer index)``; role ``None`` for units the rule never bumps."""
        layer_re = re.compile(self.layer_pattern)
        role_re = {"attn_v": re.compile(self.attn_v_pattern)}
        role_re["ffn_down"] = re.compile(self.ffn_down_pattern)
        out: list[tuple[str | None, int | None]] = []
        for u in space.units:
            m = layer_re.search(u.fqn)
            layer = int(m.group(1)) if m and m.group(1) is not None else None
            role = next((r for r in ROLES if role_re[r].search(u.fqn)), None)
            out.append((role, layer) if layer is not None else (None, None))
        return out

    def bumped(self, space: SearchSpace) -> tuple[np.ndarray, dict[str, Any]]:
        """Units the rule gives the high format, and per role the layers concerned."""
        roles = self.roles(space)
        flags = np.zeros(len(space), dtype=bool)
        info: dict[str, Any] = {}
        for role in ROLES:
            layers = sorted({layer for r, layer in roles if r == role and layer is not None})
            rank = {layer: i for i, layer in enumerate(layers)}
            high = [layer for layer in layers if use_more_bits(rank[layer], len(layers))]
            info[role] = {"n_layers": len(layers), "high_layers": high}
            chosen = set(high)
            for i, (r, layer) in enumerate(roles):
                if r == role and layer in chosen:
                    flags[i] = True
        return flags, info

    # ------------------------------------------------------------------ solve
    def solve(self, table: SensitivityTable, budget: Budget) -> Solution:
        """The K_M plan of largest cost that fits ``budget`` (see the class doc)."""
        problem, started, early = start(self, table, budget)
        if early is not None:
            return early
        space = table.space
        nominal = nominal_bits(space)
        order = width_order(nominal)
        rank = {j: r for r, j in enumerate(order)}
        base = format_index(space, self.base, "base") if self.base is not None else None
        high = format_index(space, self.high, "high") if self.high is not None else None
        if base is not None and high is not None and rank[base] >= rank[high]:
            raise ValueError("`base` must be a narrower format than `high`")
        flags, info = self.bumped(space)
        group_bumped = np.array([bool(flags[list(m)].any()) for m in problem.members])

        plans = []  # (cost, objective, position, base, high, choice)
        for pos, (b, h) in enumerate(self._candidates(order, base, high)):
            choice = snap(problem, nominal, np.where(group_bumped, h, b))
            objective, cost = problem.total(choice)
            plans.append((cost, objective, pos, b, h, choice))
        fitting = [p for p in plans if problem.fits(p[5])]
        meta = provenance(self, table, budget, started)
        rule: dict[str, Any] = {"name": "llama.cpp Q*_K_M use_more_bits", "roles": info}
        rule["bumped_units"] = int(flags.sum())
        if not fitting:
            if base is not None or high is not None:
                cheapest = min(plans, key=lambda p: (p[0], p[2]))
                msg = (
                    f"no K_M plan with the given formats fits the budget {budget.describe()}; "
                    f"the cheapest ({space.keys[cheapest[3]]}/{space.keys[cheapest[4]]}) needs "
                    f"{need(problem, budget, space, cheapest[5])}"
                )
                return infeasible(problem, table, budget, meta, message=msg)
            choice = problem.cheapest()
            meta["rule"] = {**rule, "base": None, "high": None, "fallback": "cheapest"}
            msg = "no K_M or pure pair fits: every group at its cheapest allowed format"
            return make_solution(problem, table, budget, choice, Status.FEASIBLE, meta, msg)
        cost, _, _, b, h, choice = max(fitting, key=lambda p: (p[0], -p[1], -p[2]))
        n_high = int(sum(len(problem.members[g]) for g in np.flatnonzero(choice == h)))
        meta["rule"] = {**rule, "base": space.keys[b], "high": space.keys[h], "pure": b == h}
        if b == h:
            msg = f"llama.cpp pure rule: {space.keys[b]} everywhere (no K_M pair fits)"
        else:
            msg = (
                f"llama.cpp K_M rule: base {space.keys[b]}, {space.keys[h]} on "
                f"attn_v/ffn_down of use_more_bits layers ({n_high} units at {space.keys[h]})"
            )
        return make_solution(problem, table, budget, choice, Status.FEASIBLE, meta, msg)

    @staticmethod
    def _candidates(order: list[int], base: int | None, high: int | None) -> list[tuple[int, int]]:
        """(base, high) pairs from narrowest to widest: (f_k, f_k) then (f_k, f_k+1)."""
        if base is not None and high is not None:
            return [(base, high)]
        pairs = []
        for r, j in enumerate(order):
            pairs.append((j, j))
            if r + 1 < len(order):
                pairs.append((j, order[r + 1]))
        return [
            (b, h)
            for b, h in pairs
            if (base is None or b == base) and (high is None or (h == high and b != h))
        ]
