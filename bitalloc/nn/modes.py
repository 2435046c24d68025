"""Scopes that change a model's modes for a block and always restore them.

- :func:`eval_mode`: every given model in eval mode; each module's ``training`` flag is restored
  on exit, also when the body raises.
- :func:`eval_no_grad`: :func:`eval_mode` and ``torch.no_grad``.
- :func:`grad_scope`: eval mode with autograd on, and only the given weights require grad;
  every parameter's ``requires_grad`` is restored on exit too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Eval mode for ``models``; every module's training flag is restored afterwards."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def eval_no_grad(*models: nn.Module) -> Iterator[None]:
    """:func:`eval_mode` under ``torch.no_grad``."""
    import torch

    with eval_mode(*models), torch.no_grad():
        yield


@contextlib.contextmanager
def grad_scope(model: nn.Module, weights: list[torch.Tensor]) -> Iterator[None]:
    """Only ``weights`` require grad, the model is in eval mode and autograd is on.

    Every parameter's ``requires_grad`` and every module's ``training`` flag are restored on
    exit, also when the body raises.
    """
    import torch

    params = list({id(p): p for p in [*model.parameters(), *weights]}.values())
    flags = [p.requires_grad for p in params]
    wanted = {id(w) for w in weights}
    try:
        with eval_mode(model), torch.enable_grad():
            for p in params:
                p.requires_grad_(id(p) in wanted)
            yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
