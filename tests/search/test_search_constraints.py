"""LinearConstraint rows of a Budget: validation, JSON, costs, residuals, Problem rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bitalloc.search.budget import Budget, LinearConstraint
from bitalloc.search.formats import parse_formats
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace, Unit
from bitalloc.search.table import SensitivityTable

FORMATS = parse_formats(["int2-g64", "int4-g64", "bf16"])
KEYS = tuple(f.key for f in FORMATS)


def space() -> SearchSpace:
    return SearchSpace(
        units=(
            Unit("a", (64, 128), KEYS, tie="t"),
            Unit("b", (128, 64), KEYS, tie="t"),
            Unit("c", (64, 64), KEYS[1:]),
        ),
        formats=FORMATS,
    )


LATENCY = {"a": {"int2-g64": 3.0, "int4-g64": 2.0, "bf16": 4.0}, "b": {"int2-g64": 1.0,
           "INT4-G64": 1.5, "bf16": 2.0}, "c": {"int4-g64": 0.5, "bf16": 0.25}}  # fmt: skip


def test_bops_costs_and_residuals() -> None:
    sp = space()
    bops = LinearConstraint.bops(1e6, activation_bits=8)
    cost = bops.unit_costs(sp)
    assert cost[0].tolist() == [8192 * 2 * 8, 8192 * 4 * 8, 8192 * 16 * 8]
    assert cost[2, 0] == math.inf  # not allowed
    sol = Solution(space=sp, choice=("int4-g64", "int4-g64", "bf16"), status=Status.FEASIBLE)
    total = (8192 * 4 + 8192 * 4 + 4096 * 16) * 8
    assert bops.cost(sol) == total
    budget = Budget.avg_bits(16.0).with_constraints(bops)
    res = budget.residuals(sol)
    assert res == {"memory": budget.residual(sol), "bops": 1e6 - total}


def test_per_weight_and_per_unit_costs() -> None:
    sp = space()
    row = LinearConstraint.latency({"int2-g64": 1.0, "INT4-G64": 0.5, "bf16": 2.0}, 1e5)
    assert row.per_weight is not None and row.per_weight["int4-g64"] == 0.5
    assert row.unit_costs(sp)[1].tolist() == [8192.0, 4096.0, 16384.0]
    lat = LinearConstraint.latency(LATENCY, 5.0)
    assert lat.per_unit is not None
    c = lat.unit_costs(sp)
    assert c[1, 1] == 1.5 and c[2, 0] == math.inf and c[2, 2] == 0.25
    p = Problem.build(
        SensitivityTable(space=sp, values=np.ones((3, 3)), estimator="t"),
        Budget.avg_bits(32.0, [lat, LinearConstraint.bops(1e9)]),
    )
    assert p.extra_costs.shape == (2, 2, 3) and p.extra_names == ("latency", "bops")
    assert p.extra_costs[0, 0].tolist() == [4.0, 3.5, 6.0]  # tie group a+b merged
    assert p.extra_min().tolist()[0] == 3.5 + 0.25 and p.extra_max()[0] == 6.0 + 0.5
    assert p.fits(np.array([1, 2])) and p.violated_minima() == []
    tight = Problem.build(
        SensitivityTable(space=sp, values=np.ones((3, 3)), estimator="t"),
        Budget.avg_bits(32.0, [LinearConstraint.latency(LATENCY, 3.0)]),
    )
    assert tight.violated_minima() == [("latency", 3.75, 3.0)]
    assert not tight.fits(tight.cheapest())


def test_missing_costs_name_the_constraint() -> None:
    sp = space()
    with pytest.raises(ValueError, match="'lat'.*`per_weight`.*'bf16'"):
        LinearConstraint("lat", 1.0, per_weight={"int2-g64": 1, "int4-g64": 1}).unit_costs(sp)
    with pytest.raises(ValueError, match="'lat'.*`per_unit`.*unit 'c'"):
        LinearConstraint("lat", 1.0, per_unit={k: LATENCY[k] for k in "ab"}).unit_costs(sp)
    table = {u: dict(r) for u, r in LATENCY.items()}
    del table["c"]["bf16"]
    with pytest.raises(ValueError, match="unit 'c' in format 'bf16'"):
        LinearConstraint("lat", 1.0, per_unit=table).unit_costs(sp)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "", "limit": 1, "per_bit": 1}, "`name`"),
        ({"name": "memory", "limit": 1, "per_bit": 1}, "`name`"),
        ({"name": "x", "limit": math.nan, "per_bit": 1}, "`limit`"),
        ({"name": "x", "limit": True, "per_bit": 1}, "`limit`"),
        ({"name": "x", "limit": 1}, "exactly one of"),
        ({"name": "x", "limit": 1, "per_bit": 1, "per_weight": {"bf16": 1}}, "exactly one of"),
        ({"name": "x", "limit": 1, "per_weight": {}}, "`per_weight`"),
        ({"name": "x", "limit": 1, "per_weight": {"int9-g1": 1}}, "`per_weight` key"),
        ({"name": "x", "limit": 1, "per_weight": {"bf16": math.inf}}, r"`per_weight\['bf16'\]`"),
        ({"name": "x", "limit": 1, "per_unit": {"a": 3}}, r"`per_unit\['a'\]`"),
        ({"name": "x", "limit": 1, "per_unit": {}}, "`per_unit`"),
        ({"name": "x", "limit": 1, "per_bit": "8"}, "`per_bit`"),
    ],
)
def test_invalid_constraints(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LinearConstraint(**kwargs)  # type: ignore[arg-type]


def test_invalid_budget_rows() -> None:
    with pytest.raises(ValueError, match="`activation_bits`"):
        LinearConstraint.bops(1.0, activation_bits=0)
    with pytest.raises(TypeError, match="`constraints`"):
        Budget.avg_bits(3.0, [3.0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unique.*'bops'"):
        Budget.avg_bits(3.0).with_constraints(LinearConstraint.bops(1), LinearConstraint.bops(2))
    with pytest.raises(ValueError, match="`table`"):
        LinearConstraint.latency({}, 1.0)


def test_json_round_trip_equality_and_hash() -> None:
    rows = (
        LinearConstraint.bops(2.5e9, activation_bits=8),
        LinearConstraint.latency(LATENCY, 5.0),
        LinearConstraint.latency({"int2-g64": 1.0, "bf16": 3.0}, 7.0, name="lat2"),
    )
    budget = Budget.bytes(1000, rows)
    d = json.loads(json.dumps(budget.to_dict()))
    again = Budget.from_dict(d)
    assert again == budget and hash(again) == hash(budget)
    assert len({budget, again}) == 1
    assert Budget.avg_bits(3.0).to_dict() == {"kind": "avg_bits", "value": 3.0}
    assert Budget.from_dict({"kind": "avg_bits", "value": 3.0}) == Budget.avg_bits(3.0)
    assert budget.describe() == "1,000 bytes, bops <= 2.5e+09, latency <= 5, lat2 <= 7"
    assert budget.describe(rows=False) == "1,000 bytes"
    with pytest.raises(ValueError, match="malformed constraint"):
        LinearConstraint.from_dict({"limit": 1})
