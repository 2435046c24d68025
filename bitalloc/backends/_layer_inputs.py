"""Calibration inputs for layer-wise quantization: Hessians ``H = 2 X^T X / n`` via forward hooks.

Two ways of feeding the layers (GPTQ, Frantar et al. 2023, section 4 "Step 3"):

- :func:`sequential`: block by block. One calibration pass over the float model records every
  block's call arguments; then block ``i`` is run on the outputs of the already quantized
  blocks ``0..i-1``, its layers' Hessians are collected in that pass, ``quantize_block`` is
  called, and the quantized block's outputs feed block ``i + 1``. Cache arguments
  (``cache``/``past_key_values``) are dropped and ``use_cache`` is set False on the replays.
- :func:`bitalloc.nn.hessians.one_pass`: all layers' inputs from one pass of ``forward`` over
  the model as it is (models without a list of repeated blocks, layers outside the blocks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..nn.hessians import HessianHooks

if TYPE_CHECKING:
    import torch
    from torch import nn

_CACHE_KEYS = ("cache", "past_key_values", "past_key_value", "layer_past")


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _call(block: nn.Module, x: torch.Tensor, rec: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    args, kwargs = rec
    if "hidden_states" in kwargs and not args:
        return block(**{**kwargs, "hidden_states": x})
    return block(x, *args, **kwargs)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def capture(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    batches: Sequence[Any],
    forward: Callable[[nn.Module, Any], Any],
) -> tuple[list[torch.Tensor], list[list[tuple[tuple[Any, ...], dict[str, Any]]]]]:
    """Block 0's input per batch, and every block's other call arguments per batch."""
    import torch

    inputs: list[torch.Tensor] = []
    records: list[list[Any]] = [[] for _ in blocks]
    last = len(blocks) - 1

    def hook(b: int) -> Callable[..., None]:
        def fn(_mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            kw = {k: (None if k in _CACHE_KEYS else v) for k, v in kwargs.items()}
            if "use_cache" in kw:
                kw["use_cache"] = False
            if b == 0:
                inputs.append(_hidden(args, kwargs).detach())
            records[b].append((tuple(args[1:]), kw))
            if b == last:
                raise _Stop

        return fn

    handles = [
        blk.register_forward_pre_hook(hook(b), with_kwargs=True) for b, blk in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    forward(model, batch)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    if any(len(r) != len(batches) for r in records):
        raise ValueError("every block must run exactly once per calibration batch")
    return inputs, records


def sequential(
    model: nn.Module,
    blocks: Sequence[tuple[str, nn.Module]],
    layers: dict[str, dict[str, nn.Module]],
    batches: Sequence[Any],
    forward: Callable[[nn.Module, Any], Any],
    quantize_block: Callable[[dict[str, torch.Tensor]], None],
) -> None:
    """Run blocks in order on quantized inputs; ``quantize_block(hessians)`` per block.

    ``layers`` maps a block FQN to its planned modules (blocks without any are only run).
    """
    import torch

    xs, records = capture(model, [blk for _, blk in blocks], batches, forward)
    last = max((b for b, (name, _) in enumerate(blocks) if layers.get(name)), default=-1)
    with torch.no_grad():
        for b, (name, block) in enumerate(blocks[: last + 1]):
            if layers.get(name):
                with HessianHooks(layers[name]) as hooks:
                    for x, rec in zip(xs, records[b]):
                        hooks.new_call()
                        _call(block, x, rec)
                quantize_block(hooks.hessians())
            if b < last:
                xs = [_first(_call(block, x, rec)).detach() for x, rec in zip(xs, records[b])]
