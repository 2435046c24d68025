"""Second moments of the inputs of linear layers over calibration data, in one hooked pass.

For every requested module the pre-forward hook adds ``sum_t x_t^2`` (per input column, float64)
and counts the tokens ``t``. From these:

- ``mean_square = E[x_j^2]``: the importance of input ``j`` in the activation-weighted clip
  search (:func:`bitalloc.kernels.grid.fit_grid`); it is ``diag(X^T X) / n``, so the same
  ranking as the Hessian diagonal GPTQ uses;
- ``l2_norm = ||X_j||_2``: Wanda's input-feature norm (Sun et al., arXiv 2306.11695).

Non-finite activations and layers that saw too few tokens raise ``ValueError`` naming the
layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

MIN_TOKENS = 16
"""Fewest calibration tokens a layer must see for its importance statistics."""


@dataclass(frozen=True)
class InputMoments:
    """``sum_t x_t^2`` per input column (float64 ``[in]``) over ``tokens`` positions."""

    sum_sq: torch.Tensor
    tokens: int

    @property
    def mean_square(self) -> torch.Tensor:
        """``E[x_j^2]`` as float32 ``[in]``."""
        return (self.sum_sq / max(self.tokens, 1)).float()

    @property
    def l2_norm(self) -> torch.Tensor:
        """``||X_j||_2`` as float32 ``[in]``."""
        return self.sum_sq.sqrt().float()


def input_moments(
    model: nn.Module,
    fqns: Iterable[str],
    calib: Any,
    *,
    min_tokens: int = MIN_TOKENS,
) -> dict[str, InputMoments]:
    """Input moments of the ``nn.Linear`` modules ``fqns`` over every batch of ``calib``
    (anything with ``batches`` and ``forward(model, batch)``, such as
    :class:`~bitalloc.search.calibration.Calibration`).

    Raises ``ValueError`` naming the layer when its inputs hold NaN/inf, when the forward
    never reaches it, or when it saw fewer than ``min_tokens`` tokens.
    """
    import torch
    from torch import nn

    names = list(dict.fromkeys(fqns))
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(modules.get(name), nn.Linear):
            kind = "missing" if name not in modules else type(modules[name]).__name__
            raise ValueError(f"input statistics need nn.Linear layers; {name!r} is {kind}")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)
    batch_no = [0]

    def hook(name: str) -> Any:
        def fn(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            flat = x.reshape(-1, x.shape[-1])
            if not bool(torch.isfinite(flat).all()):
                raise ValueError(
                    f"non-finite (NaN/inf) activations enter layer {name!r} on calibration "
                    f"batch {batch_no[0]}"
                )
            sq = flat.float().square().sum(dim=0, dtype=torch.float64)
            sums[name] = sq if name not in sums else sums[name] + sq
            counts[name] += flat.shape[0]

        return fn

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for b, batch in enumerate(calib.batches):
                batch_no[0] = b
                calib.forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in sums]
    if missing:
        raise ValueError(f"the calibration forward never reached layers {missing[:5]}")
    short = [n for n in names if counts[n] < min_tokens]
    if short:
        raise ValueError(
            f"layer {short[0]!r} saw {counts[short[0]]} calibration tokens; its importance "
            f"statistics need at least {min_tokens} (give more or longer calibration batches)"
        )
    return {n: InputMoments(sums[n], counts[n]) for n in names}
