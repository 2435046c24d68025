"""Shared by the backend and toolkit tests: random-token calibration, round-robin and random
plans, bitalloc's fake-quant weights, SQNR."""

from __future__ import annotations

import random

import torch
from torch import nn

from bitalloc.search.calibration import Calibration
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace

VOCAB = 320  # tests/conftest.py TINY_VOCAB


def lm_calib(n: int = 8, seed: int = 1) -> Calibration:
    """``n`` batches of 4 x 64 random token ids for the tiny Llama."""
    gen = torch.Generator().manual_seed(seed)
    return Calibration(
        batches=tuple(torch.randint(0, VOCAB, (4, 64), generator=gen) for _ in range(n))
    )


def plan(model: nn.Module, formats: list[str], **space_opts) -> Solution:  # noqa: ANN003
    """A plan giving unit ``i`` the format ``formats[i % len(formats)]``."""
    space = SearchSpace.from_model(model, formats, **space_opts)
    choice = tuple(formats[i % len(formats)] for i in range(len(space)))
    return Solution(space=space, choice=choice, status=Status.FEASIBLE)


def random_plan(model: nn.Module, formats: list[str], seed: int = 0, **space_opts) -> Solution:  # noqa: ANN003
    """A plan giving each unit a format drawn from its allowed ones (``random.Random(seed)``)."""
    space = SearchSpace.from_model(model, formats, **space_opts)
    rng = random.Random(seed)
    choice = tuple(rng.choice(u.allowed) for u in space.units)
    return Solution(space=space, choice=choice, status=Status.FEASIBLE)


def fake_quant_weights(
    model: nn.Module, solution: Solution, backend: str = "rtn", calib: Calibration | None = None
) -> dict[str, torch.Tensor]:
    """``W_hat`` per planned layer as ``backend`` applies it (the model is restored)."""
    from bitalloc.backends import BACKENDS

    handle = BACKENDS.get(backend).apply(model, solution, calib=calib)
    try:
        units = solution.space.units
        return {u.fqn: model.get_submodule(u.fqn).weight.detach().clone() for u in units}
    finally:
        handle.restore()


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``approx`` against ``ref`` in dB."""
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - approx).pow(2).sum()))
