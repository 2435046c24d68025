"""Unit discovery: which modules of a model are searched, tie groups, channel slices."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .formats import QuantFormat
from .space import DEFAULT_EXCLUDE, Unit

if TYPE_CHECKING:
    from torch import nn


def discover(
    model: nn.Module,
    formats: tuple[QuantFormat, ...],
    *,
    include: Sequence[str] | str = (),
    exclude: Sequence[str] | str | None = None,
    tie: Sequence[str] | str | None = None,
    channel_group: int | None = None,
    example_input: Any = None,
    embeddings: bool = False,
) -> tuple[Unit, ...]:
    """The units of ``model`` (see :meth:`SearchSpace.from_model` for the arguments)."""
    from torch import nn

    if channel_group is not None:
        if (
            isinstance(channel_group, bool)
            or not isinstance(channel_group, int)
            or channel_group < 1
        ):
            raise ValueError(f"`channel_group` must be a positive int, got {channel_group!r}")
        if tie not in (None, (), []):
            raise ValueError(
                "`tie` and `channel_group` cannot be combined: ties bind whole "
                "layers, channel groups split them"
            )
    inc = _patterns(include, "include")
    exc = _patterns(DEFAULT_EXCLUDE if exclude is None else exclude, "exclude")
    units: list[Unit] = []
    owners = _weight_owners(model)
    multiplied = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
    }
    tied_tables = []
    for name, mod in model.named_modules():
        table = embeddings and isinstance(mod, nn.Embedding)
        if not table and not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        if (inc and not _matches(name, inc)) or _matches(name, exc):
            continue
        if table and id(mod.weight) in multiplied:
            tied_tables.append(name)  # searched as the lm_head that multiplies by it
            continue
        shape = tuple(int(s) for s in mod.weight.shape)
        allowed = tuple(f.key for f in formats if f.supports(shape))
        owner = owners[id(mod.weight)]
        shares = None if owner == name else owner
        if shares is not None and any(u.fqn == owner for u in units):
            continue  # the tensor is searched once, as its owner
        if channel_group is None:
            units.append(
                Unit(name=name, shape=shape, allowed=allowed, shares=shares, embedding=table)
            )
            continue
        for start in range(0, shape[0], channel_group):
            stop = min(start + channel_group, shape[0])
            units.append(
                Unit(
                    name=f"{name}[{start}:{stop}]",
                    shape=(stop - start, *shape[1:]),
                    allowed=allowed,
                    channels=(start, stop),
                    shares=shares,
                    embedding=table,
                )
            )
    for name in tied_tables:
        if not any(u.shares == name for u in units):
            raise ValueError(
                f"{name}'s weight is tied to a linear layer (lm_head) that is not searched: "
                "search the tied tensor with lm_head=True"
            )
    if not units:
        raise ValueError(
            "the search space is empty: no nn.Linear/Conv/Embedding module matched "
            f"include={list(inc) or 'all'} exclude={list(exc)}"
        )
    if channel_group is not None:
        return tuple(units)
    labels = _tie_labels(model, [u.name for u in units], tie, example_input)
    return tuple(
        Unit(
            u.name, u.shape, u.allowed, labels.get(u.name), shares=u.shares, embedding=u.embedding
        )
        for u in units
    )


def _weight_owners(model: nn.Module) -> dict[int, str]:
    """``id(weight)`` -> FQN of the first module (``named_modules`` order) holding it: a tied
    ``lm_head``'s weight is owned by the token embedding that comes before it."""
    owners: dict[int, str] = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if w is not None and id(w) not in owners:
            owners[id(w)] = name
    return owners


def _patterns(value: Sequence[str] | str, arg: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    for p in items:
        if not isinstance(p, str):
            raise TypeError(f"`{arg}` patterns must be strings, got {type(p).__name__}")
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                raise ValueError(f"`{arg}` pattern {p!r} is not a valid regex: {e}") from None
    return items


def _matches(name: str, patterns: Sequence[str]) -> bool:
    for p in patterns:
        if p.startswith("re:"):
            if re.fullmatch(p[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, p):
            return True
    return False


def _tie_labels(model: nn.Module, names: list[str], tie: Any, example: Any) -> dict[str, str]:
    if tie is None or tie == () or tie == []:
        return {}
    if tie == "auto":
        from .ties import shared_input_groups

        groups = shared_input_groups(model, names, example)
        return {n: g[0] for g in groups if len(g) > 1 for n in g}
    labels: dict[str, str] = {}
    for k, p in enumerate(_patterns(tie, "tie")):
        rx = re.compile(p[3:] if p.startswith("re:") else p)
        if rx.groups < 1:
            raise ValueError(f"`tie` pattern {p!r} needs a capture group that names the group")
        for n in names:
            m = rx.fullmatch(n)
            if m and n not in labels:
                labels[n] = f"tie{k}:{m.group(1)}"
    counts: dict[str, int] = {}
    for lab in labels.values():
        counts[lab] = counts.get(lab, 0) + 1
    return {n: lab for n, lab in labels.items() if counts[lab] > 1}
