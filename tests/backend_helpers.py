"""Inputs shared by the backend tests: random-token calibration and round-robin plans."""

from __future__ import annotations

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
