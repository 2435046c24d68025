"""One encoding of a plan as named categorical parameters (Optuna trials, sweeps).

A free unit is the parameter named after the unit; a tie group is one parameter
``tie:<label>`` (the prefix keeps a label from colliding with a unit name), whose choices are
the formats every member allows, in the space's format order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .solution import Solution
    from .space import SearchSpace, Unit

TIE_PREFIX = "tie:"


def param_name(unit: Unit) -> str:
    """The parameter that holds ``unit``'s format: its name, or ``tie:<label>``."""
    return unit.name if unit.tie is None else TIE_PREFIX + unit.tie


def plan_params(space: SearchSpace) -> dict[str, tuple[str, ...]]:
    """Param name -> format choices: one per free unit and one per tie group (model order)."""
    out: dict[str, tuple[str, ...]] = {}
    groups = space.tie_groups()
    for u in space.units:
        name = param_name(u)
        if u.tie is None:
            out[name] = u.allowed
        elif name not in out:
            members = [space.units[i] for i in groups[u.tie]]
            common = set.intersection(*(set(m.allowed) for m in members))
            out[name] = tuple(k for k in space.keys if k in common)
    return out


def params_to_choice(space: SearchSpace, params: Mapping[str, str]) -> tuple[str, ...]:
    """Per-unit format keys from a trial's params (see :func:`plan_params`)."""
    try:
        return tuple(params[param_name(u)] for u in space.units)
    except KeyError as e:
        raise ValueError(f"trial params lack {e.args[0]!r}: not a plan of this space") from None


def plan_to_params(solution: Solution) -> dict[str, str]:
    """The params that encode ``solution`` (to enqueue a known plan)."""
    return {param_name(u): key for u, key in zip(solution.space.units, solution.choice)}
