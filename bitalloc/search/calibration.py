"""Calibration data: the batches a user feeds the model, and how to feed them.

The library never builds data loaders. A :class:`Calibration` holds ready batches plus a
``forward(model, batch)`` callable (default: ``model(input_ids=batch)`` for a tensor,
``model(**batch)`` for a mapping) and an optional ``loss(output, batch)`` for gradient-based
estimators.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def default_forward(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on one batch: token ids as ``input_ids``, a mapping as keyword args."""
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(input_ids=batch)


@dataclass(frozen=True, slots=True)
class Calibration:
    """Calibration batches and the way to run the model on them.

    Args:
        batches: tensors of token ids ``[B, T]`` or mappings of tensors (model kwargs).
        forward: ``forward(model, batch) -> output``; defaults to :func:`default_forward`.
        loss: ``loss(output, batch) -> scalar tensor`` for gradient-based estimators;
            ``None`` means "use ``output.loss`` when the model computes one".
        name: a label recorded in provenance (e.g. ``"wikipedia-calib"``).
    """

    batches: tuple[Any, ...]
    forward: Callable[[nn.Module, Any], Any] = field(default=default_forward)
    loss: Callable[[Any, Any], torch.Tensor] | None = None
    name: str = "calibration"

    def __post_init__(self) -> None:
        if not isinstance(self.batches, tuple):
            object.__setattr__(self, "batches", tuple(self.batches))
        if len(self.batches) == 0:
            raise ValueError("`calib.batches` is empty: give at least one calibration batch")
        for i, batch in enumerate(self.batches):
            ids = token_ids(batch)
            if ids is not None and (ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1):
                raise ValueError(
                    f"`calib` batch {i} has token ids of shape {tuple(ids.shape)}: token "
                    "batches must be [rows >= 1, tokens >= 1]"
                )

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def n_tokens(self) -> int:
        """Number of token positions over all batches (tensors or ``input_ids`` entries)."""
        return sum(int(_ids(b).numel()) for b in self.batches)

    def fingerprint(self) -> str:
        """SHA-256 over the batches' bytes, shapes and dtypes (stable across runs)."""
        h = hashlib.sha256(self.name.encode())
        for batch in self.batches:
            items = sorted(batch.items()) if isinstance(batch, Mapping) else [("", batch)]
            for key, tensor in items:
                t = tensor.detach().cpu().contiguous()
                h.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
                h.update(t.view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
        return h.hexdigest()[:16]


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


def token_ids(batch: Any) -> torch.Tensor | None:
    """The batch's integer token ids (a tensor, or a mapping's ``input_ids``), else ``None``."""
    import torch

    ids = batch.get("input_ids") if isinstance(batch, Mapping) else batch
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype.is_complex:
        return None
    return None if ids.dtype == torch.bool else ids


def _ids(batch: Any) -> torch.Tensor:
    if isinstance(batch, Mapping):
        return batch["input_ids"]
    return batch


def as_calibration(calib: Calibration | Sequence[Any]) -> Calibration:
    """Accept a :class:`Calibration` or a plain sequence of batches."""
    if isinstance(calib, Calibration):
        return calib
    if isinstance(calib, (list, tuple)):
        return Calibration(batches=tuple(calib))
    raise TypeError(
        f"`calib` must be a Calibration or a list of batches, got {type(calib).__name__}"
    )
