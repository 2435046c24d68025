"""The measured correction of a table: recovers planted multipliers, keeps monotonicity,
ranks held-out plans better than the raw table, refuses bad input."""

from __future__ import annotations

import numpy as np
import pytest
from contracts.solver import budget_between, random_table
from scipy.stats import spearmanr

from bitalloc.search.correction import Correction, fit_correction, layer_type
from bitalloc.search.formats import QuantFormat
from bitalloc.search.solution import Solution, Status
from bitalloc.search.space import SearchSpace, Unit
from bitalloc.search.table import SensitivityTable
from bitalloc.solvers.sampling import near_plans

FORMATS = ("int2-g64", "int3-g64", "int4-g64", "int8-g64")
TRUE_BITS = {2: 3.0, 3: 1.4, 4: 1.0, 8: 1.0}


def typed_table(seed: int, n_layers: int = 6) -> SensitivityTable:
    """A table over q/k/down units of ``n_layers`` blocks, values ~ s * 4^-bits."""
    rng = np.random.default_rng(seed)
    names = [f"model.layers.{i}.{t}" for i in range(n_layers) for t in ("q_proj", "down_proj")]
    fmts = tuple(QuantFormat.parse(f) for f in FORMATS)
    units = tuple(Unit(name=n, shape=(64, 128), allowed=FORMATS) for n in names)
    space = SearchSpace(units=units, formats=fmts)
    sens = rng.lognormal(0, 1, size=len(units))[:, None]
    values = sens * np.array([4.0**-f.bits for f in fmts])[None, :]
    return SensitivityTable(space=space, values=values, estimator="test")


def measured(
    table: SensitivityTable, plans: list[Solution], noise: float, seed: int
) -> list[float]:
    """A "true" KL: per-bit multipliers TRUE_BITS times the table, plus relative noise."""
    rng = np.random.default_rng(seed)
    col = {k: j for j, k in enumerate(table.space.keys)}
    out = []
    for p in plans:
        s = sum(
            TRUE_BITS[table.space.formats[col[k]].bits] * table.values[i, col[k]]
            for i, k in enumerate(p.choice)
        )
        out.append(float(s * (1 + noise * rng.standard_normal())))
    return out


def test_layer_type_drops_prefixes_and_slices() -> None:
    assert layer_type("model.layers.3.self_attn.q_proj") == "q_proj"
    assert layer_type("model.layers.3.mlp.down_proj[0:64]") == "down_proj"
    assert layer_type("fc") == "fc"


def test_recovers_planted_bit_multipliers_and_auto_picks_them() -> None:
    table = typed_table(0)
    budget = budget_between(table, 0.35)
    plans = near_plans(table, budget, 30, seed=1)
    assert len(plans) >= 20
    fit = fit_correction(table, plans, measured(table, plans, 0.0, 0))
    assert fit.kind in ("bits", "bits+type")
    assert fit.bit_factors[2] / fit.bit_factors[4] == pytest.approx(3.0, rel=0.05)
    assert fit.bit_factors[3] / fit.bit_factors[4] == pytest.approx(1.4, rel=0.05)
    assert fit.fit_error < 0.01 and fit.n_plans == len(plans)
    scale = fit_correction(table, plans, measured(table, plans, 0.0, 0), kind="scale")
    assert scale.loo_error > fit.loo_error


def test_corrected_table_ranks_held_out_plans_better() -> None:
    table = typed_table(2)
    budget = budget_between(table, 0.4)
    train = near_plans(table, budget, 24, seed=3)
    held = [
        p
        for p in near_plans(table, budget, 60, seed=9)
        if p.choice not in {t.choice for t in train}
    ]
    fit = fit_correction(table, train, measured(table, train, 0.05, 4))
    y = measured(table, held, 0.0, 5)
    raw = [p.objective for p in held]
    rho_raw = spearmanr(raw, y).statistic
    rho_fit = spearmanr(fit.predict(table, held), y).statistic
    assert rho_fit > rho_raw


@pytest.mark.parametrize("kind", ["scale", "bits", "type", "bits+type"])
def test_corrected_table_stays_monotone_where_the_raw_was(kind: str) -> None:
    table = random_table(4, n_units=12, formats=FORMATS, ties=(), mask_prob=0.2)
    budget = budget_between(table, 0.4)
    plans = near_plans(table, budget, 16, seed=0)
    rng = np.random.default_rng(0)
    y = [p.objective * rng.uniform(0.5, 3.0) for p in plans]  # wild: factors far from 1
    corrected = fit_correction(table, plans, y, kind=kind).apply(table)
    for i, u in enumerate(table.space.units):
        cols = [j for j in range(len(FORMATS)) if np.isfinite(table.values[i, j])]
        cols.sort(key=lambda j: table.space.formats[j].bits_per_weight(u.shape))
        raw, new = table.values[i, cols], corrected.values[i, cols]
        if np.all(np.diff(raw) <= 0):
            assert np.all(np.diff(new) <= 0), u.name
        assert np.array_equal(np.isfinite(new), np.isfinite(raw))
    assert corrected.meta["correction"]["kind"] == kind


def test_a_planted_extreme_factor_cannot_zero_a_level() -> None:
    table = typed_table(6)
    budget = budget_between(table, 0.35)
    plans = near_plans(table, budget, 20, seed=2)
    fit = fit_correction(table, plans, measured(table, plans, 0.0, 0), kind="bits")
    assert all(v > 0 for v in fit.bit_factors.values())  # ridge towards the common scale


def test_bad_input_is_refused() -> None:
    table = typed_table(1)
    plans = near_plans(table, budget_between(table, 0.4), 6, seed=0)
    with pytest.raises(ValueError, match=">= 4 plans"):
        fit_correction(table, plans[:3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=">= 4 plans with finite, positive"):
        fit_correction(table, plans[:4], [1.0, -2.0, 3.0, 1.0])
    with pytest.raises(ValueError, match="6 plans but 5 measurements"):
        fit_correction(table, plans, [1.0] * 5)
    with pytest.raises(ValueError, match="`kind` must be 'auto' or one of"):
        fit_correction(table, plans, [1.0] * 6, kind="magic")
    other = typed_table(1, n_layers=2)
    foreign = Solution(space=other.space, choice=("int4-g64",) * 4, status=Status.FEASIBLE)
    with pytest.raises(ValueError, match="another search space"):
        fit_correction(table, [*plans[:4], foreign], [1.0] * 5)


def test_to_dict_round_trips_the_factors() -> None:
    c = Correction(kind="bits", bit_factors={2: 2.0, 4: 1.0}, scale=1.0, n_plans=5)
    d = c.to_dict()
    assert d["bit_factors"] == {"2": 2.0, "4": 1.0} and d["kind"] == "bits"


def test_factors_stay_within_the_trust_region() -> None:
    from bitalloc.search.correction import TRUST

    table = typed_table(7)
    budget = budget_between(table, 0.35)
    plans = near_plans(table, budget, 20, seed=3)
    # a measurement in which 2-bit entries cost 100x the table: far outside the region
    col = {k: j for j, k in enumerate(table.space.keys)}
    y = [
        sum(
            (100.0 if table.space.formats[col[k]].bits == 2 else 1.0) * table.values[i, col[k]]
            for i, k in enumerate(p.choice)
        )
        for p in plans
    ]
    for kind in ("bits", "type", "bits+type"):
        fit = fit_correction(table, plans, y, kind=kind)
        f = fit.factors(table) / fit.scale
        assert f.max() <= TRUST**2 * (1 + 1e-9) and f.min() >= TRUST**-2 * (1 - 1e-9), kind
        assert np.all(f > 0), kind
    # the 2-bit factor wants ~100x the others: the bound is what holds it
    bits = fit_correction(table, plans, y, kind="bits")
    assert bits.bit_factors[2] == pytest.approx(TRUST * bits.scale, rel=1e-6)
