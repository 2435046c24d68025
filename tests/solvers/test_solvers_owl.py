"""OWL: outlier ratios (torch) and the numpy allocation hitting the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitalloc import SearchSpace, solve
from bitalloc.search.budget import Budget
from bitalloc.search.formats import QuantFormat
from bitalloc.search.space import Unit
from bitalloc.search.table import SensitivityTable
from bitalloc.sensitivity.outliers import (
    block_of,
    input_norms,
    outlier_ratios,
    with_outlier_ratios,
)
from bitalloc.solvers.owl import OwlSolver

LEVELS = ["int4-g64"] + [f"int4-g64-s{s / 100:g}" for s in range(30, 75, 5)]


def ladder_table(ratios, shapes=None, ties=None) -> SensitivityTable:
    n = len(ratios)
    shapes = shapes or [(128, 320)] * n  # 0.05 * 320 = 16: bytes linear in sparsity
    units = tuple(
        Unit(f"model.layers.{i}.mlp.up", shapes[i], tuple(LEVELS), (ties or [None] * n)[i])
        for i in range(n)
    )
    space = SearchSpace(units=units, formats=tuple(QuantFormat.parse(k) for k in LEVELS))
    values = np.tile(np.linspace(0.0, 1.0, len(LEVELS)), (n, 1))
    return with_outlier_ratios(SensitivityTable(space, values, "test"), ratios)


def uniform_bytes(table: SensitivityTable, key: str) -> int:
    return sum(QuantFormat.parse(key).nbytes(u.shape) for u in table.space.units)


def sparsities(sol) -> np.ndarray:
    return np.array([QuantFormat.parse(k).sparsity for k in sol.choice])


def test_hand_example() -> None:
    # ratios 0, .5, 1 -> d = [0, .1, .2] - .1 -> S_i = S + [.1, 0, -.1]
    table = ladder_table([0.0, 0.5, 1.0])
    budget = Budget.bytes(uniform_bytes(table, "int4-g64-s0.5"))
    sol = OwlSolver(lamda=0.1).solve(table, budget)
    assert sol.success, sol.message
    assert list(sparsities(sol)) == [0.6, 0.5, 0.4]
    assert sol.nbytes == budget.value


def test_non_uniform_and_on_budget() -> None:
    rng = np.random.default_rng(0)
    ratios = rng.random(12)
    shapes = [(64 * int(rng.integers(1, 4)), 256) for _ in range(12)]
    table = ladder_table(ratios, shapes)
    for target in ("int4-g64-s0.5", "int4-g64-s0.6"):
        limit = uniform_bytes(table, target)
        sol = solve(table, Budget.bytes(limit), solver="owl", lamda=0.08)
        s = sparsities(sol)
        assert sol.success and sol.nbytes <= limit
        assert sol.nbytes >= 0.98 * limit  # the budget is used, not left idle
        assert s.max() - s.min() >= 0.1  # non-uniform
        assert s.max() - s.min() <= 2 * 0.08 + 0.05 + 1e-9  # within [S - lam, S + lam] +- a step
        order = np.argsort(ratios)  # more outliers -> less sparsity
        assert (np.diff(s[order]) <= 1e-12).all()
        numel = np.array([u.numel for u in table.space.units])
        want = QuantFormat.parse(target).sparsity
        assert abs(np.average(s, weights=numel) - want) <= 0.05


def test_ties_share_a_level_and_lamda_zero_is_uniform() -> None:
    table = ladder_table([0.0, 1.0, 0.2, 0.9], ties=["t", "t", None, None])
    budget = Budget.bytes(uniform_bytes(table, "int4-g64-s0.5"))
    sol = OwlSolver().solve(table, budget)
    assert sol.choice[0] == sol.choice[1]
    flat = OwlSolver(lamda=0.0).solve(table, budget)
    assert set(flat.choice) == {"int4-g64-s0.5"}


def test_infeasible_and_bad_input() -> None:
    table = ladder_table([0.1, 0.2])
    sol = OwlSolver().solve(table, Budget.bytes(uniform_bytes(table, "int4-g64-s0.7") - 1))
    assert not sol.success and "minimum achievable" in sol.message
    with pytest.raises(ValueError, match="`outlier_ratios` must hold 2"):
        OwlSolver(outlier_ratios=(0.1, 0.2, 0.3)).solve(table, Budget.avg_bits(4.0))
    two = ["int4-g64-s0.5", "int8-g64-s0.5"]
    space = SearchSpace(
        units=(Unit("a", (8, 64), tuple(two)),), formats=tuple(map(QuantFormat.parse, two))
    )
    t2 = SensitivityTable(space, np.zeros((1, 2)), "test")
    with pytest.raises(ValueError, match="`base` must name.*int4-g64.*int8-g64"):
        OwlSolver().solve(t2, Budget.avg_bits(8.0))
    assert OwlSolver(base="int8-g64").solve(t2, Budget.avg_bits(8.0)).choice == ("int8-g64-s0.5",)
    with pytest.raises(ValueError, match="`lamda`"):
        OwlSolver(lamda=0.7)
    with pytest.raises(ValueError, match="`ratios` must be 2 finite"):
        with_outlier_ratios(table, [0.1, np.nan])


def test_outlier_ratios_on_tiny_llama(tiny_llama, tiny_calib) -> None:
    space = SearchSpace.from_model(tiny_llama, ["int4-g32-s0.5", "int4-g32-s0.6"])
    per_unit = outlier_ratios(tiny_llama, space, tiny_calib, per="unit", hyper_m=3.0)
    name = "model.layers.1.mlp.down_proj"
    norms = input_norms(tiny_llama, [name], tiny_calib)[name]
    a = tiny_llama.get_submodule(name).weight.detach().abs() * norms
    expected = float((a > 3.0 * a.mean()).float().mean())
    assert per_unit[space.index(name)] == pytest.approx(expected, rel=1e-6)
    blocks = outlier_ratios(tiny_llama, space, tiny_calib, hyper_m=3.0)
    assert ((blocks >= 0) & (blocks <= 1)).all() and per_unit.max() > 0
    assert block_of(name) == "model.layers.1"
    for b in ("model.layers.0", "model.layers.1"):
        idx = [i for i, u in enumerate(space.units) if block_of(u.name) == b]
        assert len(set(blocks[idx])) == 1 and len(idx) == 7
    table = with_outlier_ratios(
        SensitivityTable(space, np.zeros((len(space), 2)), "none"), per_unit
    )
    limit = 0.5 * (uniform_bytes(table, "int4-g32-s0.5") + uniform_bytes(table, "int4-g32-s0.6"))
    sol = solve(table, Budget.bytes(limit), solver="owl")
    assert sol.success and sol.nbytes <= limit and len(set(sol.choice)) == 2
    with pytest.raises(ValueError, match="`per`"):
        outlier_ratios(tiny_llama, space, tiny_calib, per="row")
    assert torch.is_tensor(norms)
