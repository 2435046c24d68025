"""Input Hessians ``X^T X`` of linear layers, collected by forward pre-hooks.

:class:`HessianHooks` adds ``sum_t x_t x_t^T`` (float64) of each module's input while it is
attached. Modules fed the same tensor in one call (q/k/v, gate/up) share one accumulator: the
first module to see a tensor is its *leader*, the others point at it. :func:`one_pass` runs a
forward over every calibration batch with the hooks attached.

Non-finite inputs raise ``ValueError`` naming the module that sees them; a module the forward
never reaches raises ``ValueError`` when the result is read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


class HessianHooks:
    """Accumulates ``sum_t x_t x_t^T`` (float64) of the input of each module while attached.

    Use as a context manager and call :meth:`new_call` before each forward, so tensor identities
    are only compared within one call.
    """

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.acc: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.leader: dict[str, str] = {}
        self._memo: dict[tuple[Any, ...], str] = {}
        self._keep: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> HessianHooks:
        self._handles = [
            m.register_forward_pre_hook(self._hook(n)) for n, m in self.modules.items()
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._keep, self._memo = [], [], {}

    def new_call(self) -> None:
        """Forget tensor identities (call before each forward)."""
        self._memo, self._keep = {}, []

    def _hook(self, name: str) -> Callable[..., None]:
        import torch

        def fn(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()))
            self._keep.append(x)  # pins the address so the key stays unique in this call
            first = self._memo.setdefault(key, name)
            if name not in self.leader:
                self.leader[name] = first
            elif self.leader[name] != self.leader.get(first, first):
                raise RuntimeError(f"input sharing of {name!r} changed between calls")
            if first != name:
                return
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            if not bool(torch.isfinite(flat).all()):
                raise ValueError(f"non-finite (NaN/inf) activations enter {name!r}")
            xtx = (flat.T @ flat).double()
            self.acc[name] = self.acc[name] + xtx if name in self.acc else xtx
            self.tokens[name] = self.tokens.get(name, 0) + flat.shape[0]

        return fn

    def _check_reached(self) -> None:
        missing = [n for n in self.modules if n not in self.leader]
        if missing:
            raise ValueError(f"the calibration forward never reached layers {missing[:5]}")

    def sums(self) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """``(sum_t x_t x_t^T, tokens)`` per module; modules fed the same input share the
        tensor object."""
        self._check_reached()
        return (
            {n: self.acc[self.leader[n]] for n in self.modules},
            {n: int(self.tokens[self.leader[n]]) for n in self.modules},
        )

    def hessians(self) -> dict[str, torch.Tensor]:
        """``H = 2 X^T X / n`` per module (one shared tensor for modules fed the same input)."""
        self._check_reached()
        scaled = {
            lead: self.acc[lead] * (2.0 / max(self.tokens[lead], 1))
            for lead in set(self.leader.values())
        }
        return {n: scaled[self.leader[n]] for n in self.modules}


def one_pass(
    model: nn.Module,
    modules: dict[str, nn.Module],
    batches: Sequence[Any],
    forward: Callable[[nn.Module, Any], Any],
    callback: Callable[[int, int, str], None] | None = None,
) -> HessianHooks:
    """The hooks of ``modules`` after one no-grad pass of ``forward`` over ``batches``."""
    import torch

    with torch.no_grad(), HessianHooks(modules) as hooks:
        for b, batch in enumerate(batches):
            hooks.new_call()
            forward(model, batch)
            if callback is not None:
                callback(b + 1, len(batches), "calibration forward")
    return hooks
