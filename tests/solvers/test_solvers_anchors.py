"""Anchor baselines: llama.cpp Q*_K_M rule, NNCF ratio fill, mlx-lm threshold bisection."""

from __future__ import annotations

import numpy as np
import pytest
from contracts.solver import budget_between, random_table

from bitalloc.search.budget import Budget
from bitalloc.search.formats import parse_formats
from bitalloc.search.problem import Problem
from bitalloc.search.solution import Status
from bitalloc.search.space import SearchSpace, Unit
from bitalloc.search.table import SensitivityTable
from bitalloc.solvers import SOLVERS
from bitalloc.solvers.llamacpp_km import LlamaCppKmSolver
from bitalloc.solvers.mlx_threshold import MlxThresholdSolver
from bitalloc.solvers.nncf_ratio import NncfRatioSolver

ANCHORS = ("llamacpp_km", "nncf_ratio", "mlx_threshold")
LLAMA_SHAPES = {  # (out, in): hidden 128, GQA kv 64, intermediate 256
    "self_attn.q_proj": (128, 128),
    "self_attn.k_proj": (64, 128),
    "self_attn.v_proj": (64, 128),
    "self_attn.o_proj": (128, 128),
    "mlp.gate_proj": (256, 128),
    "mlp.up_proj": (256, 128),
    "mlp.down_proj": (128, 256),
}


def llama_table(
    n_layers: int,
    formats: tuple[str, ...] = ("int4-g64", "int6-g64", "int8-g64"),
    *,
    seed: int = 0,
    tie_qkv: bool = False,
    disallow: dict[str, tuple[str, ...]] | None = None,
) -> SensitivityTable:
    """Llama-named units; values ~ sensitivity * 4**-bits (optionally q/k/v tied per layer)."""
    rng = np.random.default_rng(seed)
    units = []
    for i in range(n_layers):
        for role, shape in LLAMA_SHAPES.items():
            name = f"model.layers.{i}.{role}"
            allowed = tuple(f for f in formats if f not in (disallow or {}).get(name, ()))
            tie = f"qkv{i}" if tie_qkv and role.split(".")[1][0] in "qkv" else None
            units.append(Unit(name=name, shape=shape, allowed=allowed, tie=tie))
    space = SearchSpace(units=tuple(units), formats=parse_formats(formats))
    bits = np.array([f.bits for f in space.formats], dtype=np.float64)
    sens = rng.lognormal(0.0, 1.0, size=len(units))
    values = sens[:, None] * 4.0 ** -bits[None, :] * rng.lognormal(0, 0.1, (len(units), len(bits)))
    return SensitivityTable(space, np.where(space.mask, values, np.inf), "test")


def published_rule(n: int) -> set[int]:
    """llama.cpp use_more_bits(i, n), C integer arithmetic, written out independently."""
    return {i for i in range(n) if i < n // 8 or i >= (7 * n) // 8 or (i - n // 8) % 3 == 2}


def plan_bytes(table: SensitivityTable, assign: dict[str, str]) -> int:
    from bitalloc.search.formats import QuantFormat

    return sum(QuantFormat.parse(assign[u.name]).nbytes(u.shape) for u in table.space.units)


# ---------------------------------------------------------------------- llama.cpp K_M
def test_use_more_bits_32_layers_by_hand() -> None:
    assert published_rule(32) == {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}
    assert published_rule(16) == {0, 1, 4, 7, 10, 13, 14, 15}


@pytest.mark.parametrize("n_layers", [16, 32])
def test_llamacpp_km_bumps_exactly_the_published_layers(n_layers: int) -> None:
    table = llama_table(n_layers)
    high_layers = published_rule(n_layers)

    def expected(name: str) -> str:
        layer = int(name.split(".")[2])
        bumped = name.endswith(("v_proj", "down_proj")) and layer in high_layers
        return "int6-g64" if bumped else "int4-g64"

    want = {n: expected(n) for n in table.space.names}
    need = plan_bytes(table, want)
    for budget in (Budget.bytes(need), Budget.bytes(need + 100)):
        sol = SOLVERS.get("llamacpp_km").solve(table, budget)
        assert sol.status is Status.FEASIBLE
        assert dict(zip(table.space.names, sol.choice)) == want
        rule = sol.meta["rule"]
        assert (rule["base"], rule["high"]) == ("int4-g64", "int6-g64")
        assert set(rule["roles"]["attn_v"]["high_layers"]) == high_layers
        assert set(rule["roles"]["ffn_down"]["high_layers"]) == high_layers
    # one byte less: the K_M pair no longer fits -> the pure int4 plan
    sol = LlamaCppKmSolver().solve(table, Budget.bytes(need - 1))
    assert set(sol.choice) == {"int4-g64"} and sol.meta["rule"]["pure"]


def test_llamacpp_km_picks_the_widest_fitting_pair() -> None:
    formats = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")
    table = llama_table(16, formats=formats)
    unlimited = Budget.avg_bits(32.0)
    candidates = [SOLVERS.get("uniform", format=f).solve(table, unlimited) for f in formats]
    candidates += [
        LlamaCppKmSolver(base=b, high=h).solve(table, unlimited)
        for b, h in zip(formats, formats[1:])
    ]
    for bits in (2.5, 3.3, 3.5, 4.4, 5.0, 9.0):
        sol = LlamaCppKmSolver().solve(table, Budget.avg_bits(bits))
        assert sol.avg_bits <= bits
        fitting = [c.nbytes for c in candidates if c.avg_bits <= bits]
        assert sol.nbytes == max(fitting)
        rule = sol.meta["rule"]
        if not rule["pure"]:
            assert formats.index(rule["high"]) == formats.index(rule["base"]) + 1


def test_llamacpp_km_ties_and_closest_format() -> None:
    table = llama_table(
        16,
        formats=("int4-g64", "int5-g64", "int6-g64"),
        tie_qkv=True,
        disallow={"model.layers.0.mlp.down_proj": ("int6-g64",)},
    )
    sol = LlamaCppKmSolver(base="int4-g64", high="int6-g64").solve(table, Budget.avg_bits(8.0))
    got = dict(zip(table.space.names, sol.choice))
    for i in range(16):
        qkv = {got[f"model.layers.{i}.self_attn.{p}_proj"] for p in "qkv"}
        assert qkv == {"int6-g64" if i in published_rule(16) else "int4-g64"}
    assert got["model.layers.0.mlp.down_proj"] == "int5-g64"  # closest allowed to int6


def test_llamacpp_km_role_patterns_are_options() -> None:
    units = []
    for i in range(8):
        for role, shape in (
            ("attention.self.value", (64, 64)),
            ("attention.output.dense", (64, 64)),
            ("output.dense", (64, 128)),
            ("intermediate.dense", (128, 64)),
        ):
            units.append(Unit(f"encoder.layer.{i}.{role}", shape, ("int4-g64", "int8-g64")))
    space = SearchSpace(tuple(units), parse_formats(["int4-g64", "int8-g64"]))
    table = SensitivityTable(space, np.ones((len(units), 2)), "test")
    sol = LlamaCppKmSolver(base="int4-g64", high="int8-g64").solve(table, Budget.avg_bits(16))
    high = {n for n, k in zip(space.names, sol.choice) if k == "int8-g64"}
    rule = published_rule(8)
    assert high == {
        f"encoder.layer.{i}.{r}" for i in rule for r in ("attention.self.value", "output.dense")
    }
    custom = LlamaCppKmSolver(
        base="int4-g64", high="int8-g64", attn_v_pattern=r"^$", ffn_down_pattern=r"intermediate"
    )
    sol = custom.solve(table, Budget.avg_bits(16))
    high = {n for n, k in zip(space.names, sol.choice) if k == "int8-g64"}
    assert high == {f"encoder.layer.{i}.intermediate.dense" for i in rule}
    with pytest.raises(ValueError, match="layer_pattern"):
        LlamaCppKmSolver(layer_pattern=r"layers\.\d+")


# ---------------------------------------------------------------------- NNCF ratio
def scores(table: SensitivityTable, low: str, high: str) -> np.ndarray:
    keys = table.space.keys
    numel = np.array([u.numel for u in table.space.units], dtype=float)
    return (table.values[:, keys.index(low)] - table.values[:, keys.index(high)]) / numel


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.8, 0.95, 1.0])
def test_nncf_explicit_ratio_gives_that_share_to_the_least_sensitive(ratio: float) -> None:
    table = llama_table(16, seed=3)
    solver = NncfRatioSolver(ratio=ratio, low="int4-g64", high="int8-g64")
    sol = solver.solve(table, Budget.avg_bits(16.0))
    s = scores(table, "int4-g64", "int8-g64")
    numel = np.array([u.numel for u in table.space.units], dtype=float)
    low = np.array([k == "int4-g64" for k in sol.choice])
    share = numel[low].sum() / numel.sum()
    if ratio < 1:
        assert share < ratio or share == 0  # NNCF stops before the share reaches ratio
        assert share >= ratio - numel.max() / numel.sum()  # ... by less than one unit
    else:
        assert low.all()
    if low.any() and (~low).any():
        assert s[low].max() <= s[~low].min()  # the most sensitive units kept high
    assert sol.meta["rule"]["low_share"] == pytest.approx(share)


def test_nncf_ratio_none_is_the_largest_fitting_high_share() -> None:
    table = llama_table(8, seed=5)
    s = scores(table, "int4-g64", "int6-g64")
    order = np.argsort(s, kind="stable")
    nbytes = table.space.nbytes_matrix()
    cap_lo, cap_hi = nbytes[:, 0].sum(), nbytes[:, 1].sum()
    rng = np.random.default_rng(0)
    for cap in rng.integers(cap_lo, cap_hi + 1, size=15):
        budget = Budget.bytes(int(cap))
        sol = NncfRatioSolver().solve(table, budget)
        # brute force over NNCF's prefixes: the fewest low layers that fit
        best = next(
            n
            for n in range(len(order) + 1)
            if nbytes[order[:n], 0].sum() + nbytes[order[n:], 1].sum() <= cap
        )
        want = ["int6-g64"] * len(order)
        for i in order[:best]:
            want[i] = "int4-g64"
        assert list(sol.choice) == want
        again = NncfRatioSolver(ratio=sol.meta["rule"]["ratio_equivalent"])
        assert again.solve(table, budget).choice == sol.choice


def test_nncf_explicit_ratio_over_budget_is_infeasible() -> None:
    table = llama_table(8)
    sol = NncfRatioSolver(ratio=0.0, low="int4-g64", high="int8-g64").solve(
        table, Budget.avg_bits(5.0)
    )
    assert sol.status is Status.INFEASIBLE and "smallest ratio that fits" in sol.message
    with pytest.raises(ValueError, match="ratio"):
        NncfRatioSolver(ratio=1.5)
    with pytest.raises(ValueError, match="narrower"):
        NncfRatioSolver(low="int8-g64", high="int4-g64").solve(table, Budget.avg_bits(5.0))


# ---------------------------------------------------------------------- mlx threshold
@pytest.mark.parametrize("seed", range(4))
def test_mlx_threshold_matches_brute_force_threshold_scan(seed: int) -> None:
    table = llama_table(2, seed=seed, tie_qkv=bool(seed % 2))
    problem = Problem.build(table, Budget.avg_bits(32.0))
    keys = table.space.keys
    lo, hi = keys.index("int4-g64"), keys.index("int6-g64")
    numel = np.array([sum(table.space.units[i].numel for i in m) for m in problem.members])
    s = (problem.values[:, lo] - problem.values[:, hi]) / numel
    rng = np.random.default_rng(seed)
    for cap in rng.integers(problem.costs[:, lo].sum(), problem.costs[:, hi].sum(), size=12):
        budget = Budget.bytes(float(cap) / 8)
        fitting = [
            t
            for t in [-np.inf, *sorted(set(s.tolist()))]
            if problem.costs[s > t, hi].sum() + problem.costs[s <= t, lo].sum() <= cap
        ]
        best = min(fitting)
        want = problem.expand(np.where(s > best, hi, lo))
        sol = MlxThresholdSolver().solve(table, budget)
        assert sol.status is Status.FEASIBLE
        assert list(sol.choice) == [keys[j] for j in want]
        assert (sol.meta["rule"]["threshold"] or -np.inf) == best


def test_mlx_iteration_limit_still_fits() -> None:
    table = llama_table(4, seed=1)
    budget = Budget.avg_bits(5.3)
    sol = MlxThresholdSolver(iterations=1).solve(table, budget)
    assert sol.status in (Status.LIMIT, Status.FEASIBLE) and budget.residual(sol) >= 0
    full = MlxThresholdSolver().solve(table, budget)
    assert full.meta["rule"]["high_groups"] >= sol.meta["rule"]["high_groups"]
    with pytest.raises(ValueError, match="iterations"):
        MlxThresholdSolver(iterations=0)


# ---------------------------------------------------------------------- all three
@pytest.mark.parametrize("name", ANCHORS)
def test_anchors_never_exceed_random_budgets(name: str) -> None:
    solver = SOLVERS.get(name)
    rng = np.random.default_rng(42)
    tables = [llama_table(16, seed=1, tie_qkv=True)]
    tables += [random_table(s, n_units=9, mask_prob=0.3, ties=(2, 3)) for s in range(6)]
    for table in tables:
        p = Problem.build(table, Budget.avg_bits(32.0))
        for _ in range(12):
            bits = rng.uniform(0.9 * p.min_cost(), 1.1 * p.max_cost()) / table.space.numel
            budget = Budget.avg_bits(bits)
            sol = solver.solve(table, budget)
            if p.min_cost() > budget.capacity_bits(table.space):
                assert sol.status is Status.INFEASIBLE
            else:
                assert sol.status is Status.FEASIBLE, sol.message
                assert budget.residual(sol) >= 0 and "rule" in sol.meta


@pytest.mark.parametrize("name", ANCHORS)
def test_anchors_use_the_budget_monotonically(name: str) -> None:
    """More budget never yields a cheaper plan (same format pair family)."""
    table = llama_table(8, seed=2)
    solver = SOLVERS.get(name)
    sizes = [solver.solve(table, budget_between(table, f)).nbytes for f in np.linspace(0, 1, 9)]
    assert sizes[-1] >= sizes[0]
