"""Shared checking and fixing for exporters whose rules are a table of what the runtime serves.

Check: every unit's format must be one the target stores (bits, group size, symmetry, float
kind, dense) and each *binding group* must share one format: fused q/k/v and gate/up
(:func:`~bitalloc.backends.export.base.fused_name`) when the runtime fuses them, the channel
slices of one layer (:attr:`Unit.channels`) when the target has one format per tensor, and
target-specific groups (HQQ: every layer with the same ``parent.child`` tag).

Fix: each binding group (united with the plan's own tie groups) that breaks a rule gets the
format ``f*`` minimising the group's bytes among formats that the target accepts for every
member and that dominate every member's current format ``f``: ``bits(f*) >= bits(f)``, and at
equal bits a group at least as fine (per-channel = one group per row) and, when the target has
zero points, no asymmetric -> symmetric change. Preference passes, the first with a candidate
wins: groups at least as fine; then coarser groups at higher bits; then (targets with zero
points) dropping a zero point; last an unquantized float.
Candidates are the plan's formats plus the target's canonical ones; the space grows by any new
format used.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from ...search.formats import VALID_BITS, QuantFormat
from ...search.solution import Solution, Status
from ...search.space import SearchSpace, Unit
from .base import Violation, fused_name, is_sparse, require_plan, to_json

_WHY = {
    "fused": "fused into one matrix by the runtime, so these must share one format",
    "channels": "one tensor takes one format in this target; its channel slices differ",
    "tag": "this target keys formats by the layer's tag, so every layer with it must share",
}
UNFIXABLE = frozenset({"name", "tied", "embedding"})


@dataclass(frozen=True, slots=True)
class Rules:
    """What a target's runtime serves.

    Args:
        target: name used in messages.
        bits: integer code widths it stores.
        groups: group sizes it accepts (``None`` in the tuple = per-channel); ``None`` = any
            group that divides the row.
        symmetric: symmetry flags it accepts.
        floats: unquantized float kinds it keeps (``bf16``, ``fp16``).
        fused: whether q/k/v and gate/up must share a format.
        pairs: allowed ``(bits, group)`` combinations when groups depend on bits.
        ggml: whether the target stores ggml block types (``q4_k``: llama.cpp only).
        tied: whether a unit whose weight is tied to another module's (:attr:`Unit.shares`,
            a tied ``lm_head``) can be stored as one quantized tensor (GGUF's
            ``token_embd.weight``); elsewhere quantizing it apart breaks the tie.
        embeddings: whether it stores a quantized ``nn.Embedding`` (:attr:`Unit.embedding`).
    """

    target: str
    bits: tuple[int, ...]
    groups: tuple[int | None, ...] | None = None
    symmetric: tuple[bool, ...] = (False, True)
    floats: tuple[str, ...] = ("bf16", "fp16")
    fused: bool = False
    pairs: tuple[tuple[int, int | None], ...] | None = None
    ggml: bool = False
    tied: bool = False
    embeddings: bool = False

    def problem(self, fmt: QuantFormat) -> tuple[str, str] | None:
        """``(rule, message)`` when the target cannot store ``fmt``, else None."""
        if is_sparse(fmt):
            return "sparsity", f"{fmt.key}: {self.target} cannot store sparse weights"
        if fmt.is_ggml and not self.ggml:
            return "bits", f"{fmt.key} is a llama.cpp block type; {self.target} cannot store it"
        if fmt.is_float:
            if fmt.float_kind in self.floats:
                return None
            return "bits", f"{fmt.key}: {self.target} keeps floats as {_list(self.floats)}"
        if fmt.bits not in self.bits:
            return "bits", f"{fmt.key}: {self.target} supports {_list(self.bits)}-bit integers"
        if self.pairs is not None and (fmt.bits, fmt.group_size) not in self.pairs:
            ok = _list([f"int{b}-{_g(g)}" for b, g in self.pairs])
            return "group_size", f"{fmt.key}: {self.target} supports {ok}"
        if self.groups is not None and fmt.group_size not in self.groups:
            ok = _list([_g(g) for g in self.groups])
            return "group_size", f"{fmt.key}: {self.target} supports groups {ok}"
        if fmt.symmetric not in self.symmetric:
            kind = "symmetric" if fmt.symmetric else "asymmetric (zero-point)"
            return "symmetric", f"{fmt.key}: {self.target} has no {kind} integer grid"
        return None

    def canonical(self, space_groups: set[int | None]) -> list[QuantFormat]:
        """The formats the target serves (plan's group sizes where any group is allowed)."""
        if self.pairs is not None:
            pairs = list(self.pairs)
        else:
            groups = (
                self.groups
                if self.groups is not None
                else sorted(space_groups, key=lambda g: (g is None, g or 0))
            )
            pairs = [(b, g) for b in self.bits for g in groups]
        out = [
            QuantFormat(bits=b, group_size=g, symmetric=s)
            for b, g in pairs
            if b in VALID_BITS and b != 16
            for s in self.symmetric
        ]
        return out + [QuantFormat(bits=16, float_kind=k) for k in self.floats]


def _detail(names: list[str], keys: list[str]) -> str:
    """``q_proj=int3-g64, k_proj=int2-g64`` for a few units, format counts for many."""
    if len(names) <= 4:
        return ", ".join(f"{n.rsplit('.', 1)[-1]}={k}" for n, k in zip(names, keys))
    return ", ".join(f"{k} x{c}" for k, c in Counter(keys).most_common())


def _g(group: int | None) -> str:
    return "pc" if group is None else f"g{group}"


def _list(items: Any) -> str:
    return "/".join(str(i) for i in items)


class RuleExporter:
    """Mixin: ``check``/``fix`` from :meth:`rules`, :meth:`unit_problem`, :meth:`group_key`."""

    __slots__ = ()
    name: ClassVar[str]
    suffix: ClassVar[str] = ".json"

    def rules(self) -> Rules:  # pragma: no cover - every exporter overrides
        raise NotImplementedError

    def unit_problem(self, unit: Unit, fmt: QuantFormat) -> tuple[str, str] | None:
        """``(rule, message)`` when ``unit`` cannot be stored as ``fmt`` by the target."""
        return self.rules().problem(fmt)

    def group_key(self, unit: Unit) -> str | None:
        """Label of a target-specific group whose units must share a format (None = none)."""
        return None

    def serialize(self, rendered: str | dict[str, Any]) -> str:
        return to_json(rendered)

    # ------------------------------------------------------------------ check
    def consistency_groups(self, space: SearchSpace) -> list[tuple[str, str, list[int]]]:
        """``(rule, label, unit indices)`` for every group that must share a format."""
        rules = self.rules()
        found: dict[tuple[str, str], list[int]] = {}
        for i, u in enumerate(space.units):
            if u.channels is not None:
                found.setdefault(("channels", u.fqn), []).append(i)
            fused = fused_name(u.fqn) if rules.fused else None
            if fused is not None:
                found.setdefault(("fused", fused), []).append(i)
            key = self.group_key(u)
            if key is not None:
                found.setdefault(("tag", key), []).append(i)
        return [(r, label, idx) for (r, label), idx in found.items() if len(idx) > 1]

    def check(self, solution: Solution) -> list[Violation]:
        require_plan(solution)
        units, choice = solution.space.units, solution.choice
        rules = self.rules()
        out = []
        for u, key in zip(units, choice):
            if u.shares is not None and not rules.tied:
                why = (
                    f"its weight is {u.shares}'s (tied); {rules.target} would quantize "
                    f"{u.fqn} apart from it and break the tie: search without lm_head"
                )
                out.append(Violation(u.name, "tied", why, False))
                continue
            if u.embedding and not rules.embeddings:
                why = f"{rules.target} stores no quantized embedding table: search without it"
                out.append(Violation(u.name, "embedding", why, False))
                continue
            p = self.unit_problem(u, QuantFormat.parse(key))
            if p is not None:
                out.append(Violation(u.name, p[0], p[1], p[0] not in UNFIXABLE))
        for rule, label, idx in self.consistency_groups(solution.space):
            if len({choice[i] for i in idx}) > 1:
                detail = _detail([units[i].name for i in idx], [choice[i] for i in idx])
                out.append(Violation(label, rule, f"{_WHY[rule]}; the plan has {detail}"))
        return out

    # ------------------------------------------------------------------ fix
    def fix(self, solution: Solution) -> Solution:
        bad = self.check(solution)
        if not bad:
            return solution
        hopeless = [v for v in bad if not v.fixable]
        if hopeless:
            raise ValueError("cannot fix: " + "; ".join(str(v) for v in hopeless[:5]))
        space, units = solution.space, solution.space.units
        fmts = [QuantFormat.parse(k) for k in solution.choice]
        offending = {i for i, u in enumerate(units) if self.unit_problem(u, fmts[i])}
        pool = _dedupe([*space.formats, *self.rules().canonical({f.group_size for f in fmts})])
        new = list(fmts)
        for members in self._bindings(space):
            if not offending & set(members) and len({fmts[i] for i in members}) == 1:
                continue
            best = self._pick(members, units, fmts, pool)
            if best is None:
                names = ", ".join(units[i].name for i in members[:4])
                raise ValueError(
                    f"cannot fix {names}: no format of {self.rules().target} fits every unit "
                    "of the group without lowering its bits"
                )
            for i in members:
                new[i] = best
        return _rebuild(solution, new, type(self).name)

    def _bindings(self, space: SearchSpace) -> list[list[int]]:
        parent = list(range(len(space)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        groups = [idx for _, _, idx in self.consistency_groups(space)]
        groups += list(space.tie_groups().values())
        for idx in groups:
            for i in idx[1:]:
                parent[root(i)] = root(idx[0])
        out: dict[int, list[int]] = {}
        for i in range(len(space)):
            out.setdefault(root(i), []).append(i)
        return list(out.values())

    def _pick(
        self, members: list[int], units: tuple[Unit, ...], fmts: list[QuantFormat], pool: list
    ) -> QuantFormat | None:
        keep = False in self.rules().symmetric  # keep zero points where the target has them
        passes = ((True, keep, False), (False, keep, False), (False, False, False), FLOAT_PASS)
        for keep_group, keep_zero, floats in passes:
            options = [
                c
                for c in pool
                if c.is_float == floats
                and all(
                    c.supports(units[i].shape)
                    and _dominates(
                        c,
                        fmts[i],
                        units[i],
                        keep_group,
                        keep_zero and self._stores_zero(units[i], c),
                    )
                    and self.unit_problem(units[i], c) is None
                    for i in members
                )
            ]
            if options:
                return min(
                    options,
                    key=lambda c: (sum(c.nbytes(units[i].shape) for i in members), c.bits, c.key),
                )
        return None

    def _stores_zero(self, unit: Unit, fmt: QuantFormat) -> bool:
        """Whether the target could store ``fmt`` with a zero point for ``unit``: a rule that
        refuses zero points at some bits only (GPTQModel's 4-bit CPU kernel) lets a fix drop
        one there rather than raise the bits."""
        if not fmt.symmetric or fmt.is_float or fmt.is_ggml:
            return True
        twin = dataclasses.replace(fmt, symmetric=False)
        return self.unit_problem(unit, twin) is None


FLOAT_PASS = (False, False, True)  # (keep group at least as fine, keep zero point, float)


def _dominates(
    cand: QuantFormat, cur: QuantFormat, unit: Unit, keep_group: bool, keep_zero: bool
) -> bool:
    """``cand`` keeps at least ``cur``'s precision: never fewer bits; at equal bits a group at
    least as fine and (``keep_zero``) no asymmetric -> symmetric; ``keep_group`` also keeps the
    group at least as fine when bits rise. Per-channel counts as one group per row."""
    if cand.is_float:
        return True
    if cur.is_float or cand.bits < cur.bits:
        return False
    row = math.prod(unit.shape[1:])
    finer = (cand.group_size or row) <= (cur.group_size or row)
    if cand.bits > cur.bits:
        return finer or not keep_group
    return finer and (not keep_zero or not cand.symmetric or cur.symmetric)


def _dedupe(formats: list[QuantFormat]) -> list[QuantFormat]:
    return list({f.key: f for f in formats}.values())


def _rebuild(solution: Solution, new: list[QuantFormat], target: str) -> Solution:
    """The plan with ``new`` formats; the space grows by any format it did not have."""
    space = solution.space
    keys = [f.key for f in new]
    formats = _dedupe([*space.formats, *new])
    units = tuple(
        u if k in u.allowed else dataclasses.replace(u, allowed=(*u.allowed, k))
        for u, k in zip(space.units, keys)
    )
    fixed_space = SearchSpace(units=units, formats=tuple(formats))
    raised = {u.name: [o, k] for u, o, k in zip(space.units, solution.choice, keys) if o != k}
    before = solution.nbytes
    sol = Solution(
        space=fixed_space,
        choice=tuple(keys),
        status=Status.FEASIBLE,
        message=f"{len(raised)} unit(s) raised to meet the rules of {target}",
        meta={
            **solution.meta,
            "export_fix": {"target": target, "raised": raised, "bytes_before": before},
        },
    )
    return sol
