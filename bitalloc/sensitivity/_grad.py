"""Helpers shared by the gradient-based estimators (fisher, output_fisher, hessian_trace).

They run under :func:`bitalloc.nn.modes.grad_scope` (only the searched weights require grad,
eval mode, every flag restored), so a frozen model works and no ``.grad`` attribute is ever
written (estimators use ``torch.autograd.grad``).

- :func:`batch_loss` runs the model on one calibration batch and returns a finite scalar loss;
- :func:`unique_weights` lists each module's weight once (several channel-slice units may
  share a module);
- :func:`check_finite` turns a NaN/inf gradient into a ``ValueError`` naming the unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..search.calibration import Calibration
    from ..search.space import SearchSpace

NO_LOSS = (
    "calibration gives no loss: pass Calibration(loss=...) (e.g. "
    "bitalloc.data.tokens.next_token_loss for causal LMs), or a forward whose output has a "
    "tensor `.loss`"
)


def resolve_loss(calib: Calibration, output: Any, batch: Any) -> torch.Tensor:
    """``calib.loss(output, batch)`` when set, else ``output.loss`` when it is a tensor."""
    import torch

    if calib.loss is not None:
        loss = calib.loss(output, batch)
    else:
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise ValueError(NO_LOSS)
    if loss.numel() != 1:
        raise ValueError(f"the calibration loss must be a scalar, got shape {tuple(loss.shape)}")
    return loss.reshape(())


def batch_loss(model: nn.Module, calib: Calibration, index: int) -> torch.Tensor:
    """Forward calibration batch ``index`` and return its loss; ``ValueError`` if not finite."""
    import torch

    batch = calib.batches[index]
    loss = resolve_loss(calib, calib.forward(model, batch), batch)
    if not bool(torch.isfinite(loss.detach())):
        from ..search.calibration import token_ids

        ids = token_ids(batch)  # validated [rows, tokens] by Calibration
        if ids is not None and ids.shape[1] < 2:
            raise ValueError(
                f"calibration batch {index} has fewer than 2 tokens per row "
                f"(shape {tuple(ids.shape)}): a next-token loss needs at least 2"
            )
        raise ValueError(
            f"non-finite loss on calibration batch {index} ({float(loss.detach()):g})"
        )
    if not loss.requires_grad:
        raise ValueError(
            f"the loss of calibration batch {index} does not depend on the searched weights "
            "(it has no autograd graph); does `calib.forward` detach or run under no_grad?"
        )
    return loss


def unique_weights(
    modules: dict[str, nn.Module], space: SearchSpace
) -> tuple[list[str], list[torch.Tensor]]:
    """``(module FQNs, weights)``: every module owning a unit once, in space order."""
    fqns: list[str] = []
    weights: list[torch.Tensor] = []
    seen: set[int] = set()
    for u in space.units:
        w = modules[u.name].weight
        if id(w) not in seen:  # channel slices of one layer, or weights tied across modules
            seen.add(id(w))
            fqns.append(u.fqn)
            weights.append(w)
    return fqns, weights


def check_finite(grad: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` when ``grad`` holds NaN or inf."""
    import torch

    if not bool(torch.isfinite(grad).all()):
        raise ValueError(f"non-finite gradient for unit {what!r}")


def weight_grads(loss: torch.Tensor, weights: list[torch.Tensor], fqns: list[str], **kw: Any):
    """``dL/dW`` for every weight (``autograd.grad``); ``ValueError`` for a weight unused."""
    import torch

    grads = torch.autograd.grad(loss, weights, allow_unused=True, **kw)
    unused = [f for f, g in zip(fqns, grads) if g is None]
    if unused:
        raise ValueError(f"the calibration loss does not depend on units {unused[:5]}")
    return grads


def unit_rows(tensor: torch.Tensor, channels: tuple[int, int] | None) -> torch.Tensor:
    """The unit's rows of a tensor shaped like its module's weight (all rows for ``None``)."""
    return tensor if channels is None else tensor[channels[0] : channels[1]]


def weight_slot(modules: dict[str, nn.Module], weights: list[torch.Tensor]) -> dict[str, int]:
    """Unit name -> index of its module's weight in ``weights``."""
    index = {id(w): k for k, w in enumerate(weights)}
    return {name: index[id(mod.weight)] for name, mod in modules.items()}
