"""Automatic tie groups: units that read the same input tensor.

Fused runtime kernels (q/k/v projection, gate/up in a gated MLP) multiply one activation by
the concatenation of several weights, so those weights must share a format. They are found with
one hooked forward pass (:func:`bitalloc.nn.shared_inputs.shared_input_groups`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def shared_input_groups(
    model: nn.Module, names: list[str], example: Any = None
) -> list[list[str]]:
    """Groups of unit names (in model order) whose modules read the identical input tensor,
    from one forward of ``example`` (default: 8 random token ids when the model has a
    ``config.vocab_size``)."""
    from ..nn.shared_inputs import shared_input_groups as groups
    from .calibration import default_forward

    def run() -> Any:  # called after the helper has checked the names
        return default_forward(model, _example_input(model) if example is None else example)

    return groups(model, names, run)


def _example_input(model: nn.Module) -> Any:
    import torch

    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is None:
        raise ValueError(
            "tie='auto' needs `example_input` (a batch the model accepts) for this model"
        )
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, int(vocab), (1, 8), generator=gen)
