"""Frontier: budget sweeps, Pareto filtering, measured values, JSON round trip, PNG plot."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from contracts.solver import random_table

import bitalloc as ba
from bitalloc.search.api import frontier
from bitalloc.search.budget import Budget
from bitalloc.search.frontier import Frontier
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Solution, Status

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def table() -> ba.SensitivityTable:
    return random_table(5, n_units=8, ties=(2,))


@pytest.fixture(scope="module")
def sweep(table: ba.SensitivityTable) -> Frontier:
    low = Problem.build(table, Budget.avg_bits(32.0)).min_cost() / table.space.numel
    return frontier(table, [0.5 * low, 3.0, 3.5, 4.0, 5.0, 6.0, 9.0, 20.0], "ilp")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_sweep_keeps_infeasible_budgets_and_is_optimal_per_budget(
    table: ba.SensitivityTable, sweep: Frontier
) -> None:
    assert len(sweep) == 8 and sweep.meta["solver"] == "ilp"
    first = sweep.points[0]
    assert first.status is Status.INFEASIBLE and "below the minimum achievable" in first.message
    feasible = [p for p in sweep.points if p.success]
    assert len(feasible) == 7
    for p in feasible:
        bits = p.meta["budget"]["value"]
        assert p.avg_bits <= bits and p.status is Status.OPTIMAL
        best = ba.solve(table, bits, "brute_force")
        assert math.isclose(p.objective, best.objective, rel_tol=1e-9)
    losses = [p.objective for p in feasible]  # the exact optimum never rises with the budget
    assert all(b <= a * (1 + 1e-12) for a, b in zip(losses, losses[1:]))


def test_pareto_is_non_dominated_and_monotone(sweep: Frontier) -> None:
    rng = np.random.default_rng(0)
    extra = []  # random plans: mostly dominated by the exact sweep
    space = sweep.points[1].space
    for _ in range(30):
        choice = []
        for i, u in enumerate(space.units):
            tie = u.tie and space.tie_groups()[u.tie][0]
            choice.append(choice[tie] if tie is not None and tie < i else rng.choice(u.allowed))
        extra.append(
            Solution(
                space=space,
                choice=tuple(choice),
                status=Status.FEASIBLE,
                objective=float(rng.random()),
                meta={"solver": "random"},
            )
        )
    merged = sweep.merge(Frontier(tuple(extra)))
    front = merged.pareto()
    assert 0 < len(front) <= len(merged) - 1  # the infeasible point is always dropped
    sizes = [p.nbytes for p in front.points]
    losses = [p.objective for p in front.points]
    assert sizes == sorted(sizes) and all(b < a for a, b in zip(losses, losses[1:]))
    for p in merged.points:  # nothing outside the front dominates a front point
        if not p.success:
            continue
        for q in front.points:
            dominates = p.nbytes <= q.nbytes and p.objective <= q.objective
            assert not (dominates and (p.nbytes < q.nbytes or p.objective < q.objective))
    # every feasible point outside the front is dominated or equal to a front point
    for p in merged.points:
        if p.success and p not in front.points:
            assert any(q.nbytes <= p.nbytes and q.objective <= p.objective for q in front.points)


def test_evaluate_adds_measured_values_once_per_plan(sweep: Frontier) -> None:
    calls: list[tuple[str, ...]] = []

    def kl(sol: Solution) -> float:
        calls.append(sol.choice)
        return 0.1 * sol.objective + 1.0

    measured = sweep.evaluate(kl)
    assert sweep.metrics() == [] and measured.metrics() == ["kl"]
    assert len(calls) == len(set(calls)) == len({p.choice for p in sweep.points if p.success})
    for p, m in zip(measured.points, measured.measured):
        assert (m == {}) if not p.success else math.isclose(m["kl"], 0.1 * p.objective + 1.0)
    both = measured.evaluate(lambda s: {"ppl": 10.0 + s.avg_bits})
    assert both.metrics() == ["kl", "ppl"]
    frame = both.to_frame()
    assert list(frame.columns[:6]) == [
        "budget",
        "avg_bits",
        "bytes",
        "predicted_loss",
        "kl",
        "ppl",
    ]
    assert frame["status"].iloc[0] == "infeasible" and math.isnan(frame["kl"].iloc[0])
    assert frame["solver"].eq("ilp").all()
    by_kl = both.pareto(by="kl")
    kls = [m["kl"] for m in by_kl.measured]
    assert all(b < a for a, b in zip(kls, kls[1:]))
    with pytest.raises(ValueError, match="measured value"):
        sweep.pareto(by="kl")


def test_at_picks_the_best_point_within_each_budget(
    table: ba.SensitivityTable, sweep: Frontier
) -> None:
    dense = ba.frontier(table, None, "nsga2", pop_size=16, n_gen=6)
    merged = dense.merge(sweep)
    budgets = [0.1, 3.2, 4.0, 7.5]
    picked = merged.at(budgets)
    assert len(picked) == 3  # nothing fits 0.1 bits
    for b, p in zip(budgets[1:], picked.points):
        fits = [q.objective for q in merged.points if q.success and q.avg_bits <= b]
        assert p.avg_bits <= b and p.objective == min(fits)
    measured = merged.evaluate(lambda s: 1.0 / s.avg_bits)
    by_kl = measured.at([4.0], by="kl").points[0]  # the largest plan within 4 bits
    assert by_kl.avg_bits == max(q.avg_bits for q in merged.points if q.avg_bits <= 4.0)


def test_json_round_trip(tmp_path: Path, sweep: Frontier) -> None:
    measured = sweep.evaluate(lambda s: {"kl": s.objective, "ppl": 12.5})
    path = measured.save(tmp_path / "sub" / "front.json")
    assert [p.name for p in path.parent.iterdir()] == ["front.json"]  # no temp file left
    data = json.loads(path.read_text())
    assert len(data["spaces"]) == 1 and "space" not in data["points"][0]
    back = Frontier.load(path)
    assert [p.choice for p in back.points] == [p.choice for p in measured.points]
    assert [p.status for p in back.points] == [p.status for p in measured.points]
    assert back.measured == measured.measured and back.meta == measured.meta
    assert back.points[0].message == measured.points[0].message
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "bitalloc.Solution"}')
    with pytest.raises(ValueError, match="not a bitalloc frontier"):
        Frontier.load(bad)
    with pytest.raises(ValueError, match="cannot read"):
        Frontier.load(tmp_path / "missing.json")


def test_plot_writes_a_png(tmp_path: Path, table: ba.SensitivityTable, sweep: Frontier) -> None:
    other = frontier(table, [3.0, 4.0, 6.0], "greedy")
    merged = sweep.merge(other).evaluate(lambda s: s.objective + 0.01)
    for by in ("predicted", "kl"):
        path = merged.plot(tmp_path / f"pareto-{by}.png", by=by, title="test")
        width, height = _png_size(path)
        assert width >= 300 and height >= 200 and path.stat().st_size > 5_000
    assert set(merged.to_frame()["solver"]) == {"ilp", "greedy"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto-kl.png", "pareto-predicted.png"]


def test_facade_arguments(table: ba.SensitivityTable) -> None:
    with pytest.raises(ValueError, match="`budgets` is required"):
        frontier(table, None, "ilp")
    with pytest.raises(ValueError, match="non-empty sequence"):
        frontier(table, [], "ilp")
    with pytest.raises(TypeError, match="table"):
        frontier(table.values, [3.0])
    with pytest.raises(ValueError, match="takes no `evaluate`"):
        frontier(table, [3.0], "ilp", evaluate=lambda s: 0.0)
    front = ba.frontier(table, None, "nsga2", pop_size=12, n_gen=4)
    assert isinstance(front, ba.Frontier) and len(front) >= 2
    with pytest.raises(TypeError, match="Solutions"):
        Frontier((1, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`measured` needs"):
        Frontier(front.points, ({},))
