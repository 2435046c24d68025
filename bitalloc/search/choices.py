"""Closed options as str-Enums: :class:`Choice` members compare, hash, format and serialise
(JSON) as their string values, so ``method="hull"`` and ``Method.HULL`` are the same option."""

from __future__ import annotations

import enum
from typing import Any, TypeVar

C = TypeVar("C", bound="Choice")


class Choice(str, enum.Enum):
    """Base of bitalloc's closed options (a ``str`` subclass; ``str()`` is the value)."""

    def __str__(self) -> str:
        return str(self.value)

    def __hash__(self) -> int:
        return str.__hash__(self)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every member's value, in definition order."""
        return tuple(str(m.value) for m in cls)

    @classmethod
    def parse(cls: type[C], value: Any, arg: str) -> C:
        """The member ``value`` names; ValueError naming ``arg`` and the valid values."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"`{arg}` must be one of {', '.join(cls.values())}, got {value!r}"
            ) from None


def set_choice(obj: Any, arg: str, cls: type[Choice]) -> None:
    """Replace field ``arg`` of the (frozen) dataclass ``obj`` by its :class:`Choice` member."""
    object.__setattr__(obj, arg, cls.parse(getattr(obj, arg), arg))
