"""A tiny generic registry: name -> implementation class, with lazy entries.

Each sub-package (sensitivity, solvers, backends) owns one registry. Facades accept a
registered name (plus options) or a ready instance.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Registered implementations of one protocol, by lowercase name."""

    def __init__(self, kind: str, protocol: type | None = None, hint: str = "") -> None:
        """``protocol`` (a ``runtime_checkable`` Protocol), when given, is what :meth:`resolve`
        checks instances against; ``hint`` ends its TypeError (how to comply)."""
        self.kind, self.protocol, self.hint = kind, protocol, hint
        self._classes: dict[str, type[T]] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering an implementation under ``name``."""

        def deco(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._lazy.pop(name, None)  # a lazy entry is fulfilled by its module's import
            self._classes[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"module.path:ClassName"`` without importing it yet."""
        self._lazy[name] = target

    def names(self) -> tuple[str, ...]:
        return tuple(sorted({*self._classes, *self._lazy}))

    def cls(self, name: str) -> type[T]:
        """The class registered under ``name``."""
        if name not in self._classes and name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            importlib.import_module(module)  # its decorator registers the class
            if name not in self._classes:
                self._classes[name] = getattr(importlib.import_module(module), attr)
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._classes[name]

    def get(self, name: str, **options: Any) -> T:
        """Instantiate ``name`` with ``options`` (its dataclass fields)."""
        cls = self.cls(name)
        if dataclasses.is_dataclass(cls):
            valid = {f.name for f in dataclasses.fields(cls) if f.init}
            unknown = sorted(set(options) - valid)
            if unknown:
                raise ValueError(
                    f"unknown option(s) {unknown} for {self.kind} {name!r}; "
                    f"valid: {sorted(valid) or 'none'}"
                )
        return cls(**options)

    def resolve(self, obj: str | T, **options: Any) -> T:
        """A name (instantiated with ``options``) or an instance (``options`` must be empty)."""
        if isinstance(obj, str):
            return self.get(obj, **options)
        if options:
            raise ValueError(f"options {sorted(options)} given with a {self.kind} instance")
        if self.protocol is not None and not isinstance(obj, self.protocol):
            members = set(getattr(self.protocol, "__annotations__", {})) | {
                k for k, v in vars(self.protocol).items() if callable(v)
            }
            missing = sorted(m for m in members if m[0] != "_" and not hasattr(obj, m))
            raise TypeError(
                f"`{self.kind}` must be a registered name or implement the "
                f"{self.protocol.__name__} protocol; {type(obj).__name__} lacks "
                f"{', '.join(missing) or 'a member'}{self.hint}"
            )
        return obj
