"""MCKP solvers at scale: lagrangian on 10^6 per-channel units, ILP vs lagrangian at 2x10^4.

1. ``--units`` x ``--formats`` (default 1,000,000 x 6): a random per-channel table built as
   arrays (no Python loop over units), solved by ``lagrangian`` on the
   :class:`~bitalloc.search.problem.Problem` directly (methods hull and bisection, cold and
   warm). Prints time, objective, LP bound, gap and the budget residual. The full API path
   (``SearchSpace`` of ``Unit`` objects, ``SensitivityTable``, ``solve``) is timed stage by stage
   on ``--api-units`` units: its per-unit Python objects, not the solver, dominate there.
2. ``--ilp-units`` x 5 formats (default 20,000 x 5 = 100,000 binaries), through the public
   API: ``ilp`` (auto; at this size it first tries the LP rounding against the LP bound),
   ``lagrangian``, and ``ilp`` forced through scipy/HiGHS branch and bound
   (``mip_rel_gap=1e-6``, ``--mip-time`` limit): time and objective.
3. ``--threshold``: CBC vs scipy/HiGHS at a few small sizes (the ``auto`` switch point).

    python benchmarks/solver_scale.py [--units 1000000] [--formats 6] [--ilp-units 20000]
                                      [--mip-time 60] [--api-units 100000] [--threshold]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from bitalloc.search.budget import Budget
from bitalloc.search.formats import QuantFormat
from bitalloc.search.problem import Problem
from bitalloc.search.space import SearchSpace, Unit
from bitalloc.search.table import SensitivityTable
from bitalloc.solvers import SOLVERS
from bitalloc.solvers.lagrangian import solve_problem

BITS = (2, 3, 4, 5, 6, 8)
IN_FEATURES = (1024, 2048, 4096)  # per-channel units: 8 output rows of a layer
AVG_BITS = 3.6


def formats(n: int) -> list[QuantFormat]:
    return [QuantFormat(bits=b, group_size=128) for b in BITS[:n]]


def random_arrays(n: int, n_fmt: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, costs in bits, numel)``: exact bytes per shape, values ~ s * 4^-bits * noise."""
    rng = np.random.default_rng(seed)
    fmts = formats(n_fmt)
    shape_id = rng.integers(0, len(IN_FEATURES), n)
    per_shape = np.array([[8.0 * f.nbytes((8, k)) for f in fmts] for k in IN_FEATURES])
    costs = per_shape[shape_id]
    numel = 8.0 * np.array(IN_FEATURES, dtype=float)[shape_id]
    bits = np.array([f.bits for f in fmts], dtype=float)
    sens = rng.lognormal(0.0, 1.5, (n, 1)) * numel[:, None]
    values = sens * 4.0 ** -bits[None, :] * rng.lognormal(0.0, 0.3, (n, n_fmt))
    return values, costs, numel


def lagrangian_at_scale(n: int, n_fmt: int, seed: int) -> None:
    t0 = time.perf_counter()
    values, costs, numel = random_arrays(n, n_fmt, seed)
    cap = AVG_BITS * float(numel.sum())
    problem = Problem(
        values, costs, tuple((i,) for i in range(n)), cap, n, unit_group=np.arange(n)
    )
    print(f"## lagrangian, {n:,} units x {n_fmt} formats, {AVG_BITS} avg bits")
    print(f"table built in {time.perf_counter() - t0:.2f} s (arrays, no per-unit objects)\n")
    print("| method | run | time s | objective | LP bound | gap | residual bits | fill moves |")
    print("|---|---|---|---|---|---|---|---|")
    for method in ("hull", "bisection"):
        for run in ("cold", "warm"):
            t = time.perf_counter()
            res = solve_problem(problem, method)
            wall = time.perf_counter() - t
            residual = cap - res.cost
            assert residual >= 0 and problem.fits(res.choice)
            print(
                f"| {method} | {run} | {wall:.3f} | {res.objective:.9g} | {res.lp_bound:.9g} "
                f"| {res.gap:.2e} | {residual:,.0f} | {res.info['fill_moves']} |"
            )
    print()


def api_table(n: int, n_fmt: int, seed: int) -> tuple[SensitivityTable, dict[str, float]]:
    """The same kind of table through ``Unit``/``SearchSpace``/``SensitivityTable``."""
    values, _, numel = random_arrays(n, n_fmt, seed)
    keys = tuple(f.key for f in formats(n_fmt))
    times = {}
    t = time.perf_counter()
    units = tuple(
        Unit(f"layer{i // 512}.proj[{8 * (i % 512)}:{8 * (i % 512) + 8}]", (8, int(m) // 8), keys)
        for i, m in enumerate(numel)
    )
    space = SearchSpace(units=units, formats=tuple(formats(n_fmt)))
    times["space"] = time.perf_counter() - t
    t = time.perf_counter()
    table = SensitivityTable(space=space, values=values, estimator="random")
    times["table"] = time.perf_counter() - t
    return table, times


def api_overhead(n: int, n_fmt: int, seed: int) -> None:
    table, times = api_table(n, n_fmt, seed)
    budget = Budget.avg_bits(AVG_BITS)
    t = time.perf_counter()
    problem = Problem.build(table, budget)
    times["Problem.build"] = time.perf_counter() - t
    t = time.perf_counter()
    solve_problem(problem, "hull")
    times["solver core"] = time.perf_counter() - t
    t = time.perf_counter()
    sol = SOLVERS.get("lagrangian").solve(table, budget)
    times["LagrangianSolver.solve (build + core + Solution + exact check)"] = (
        time.perf_counter() - t
    )
    print(f"## full API path, {n:,} units x {n_fmt} formats (status {sol.status.value})\n")
    print("| stage | time s |\n|---|---|")
    for k, v in times.items():
        print(f"| {k} | {v:.2f} |")
    print()


def ilp_vs_lagrangian(n: int, seed: int, mip_time: float) -> None:
    table, _ = api_table(n, 5, seed)
    budget = Budget.avg_bits(AVG_BITS)
    print(f"## ilp (auto) vs lagrangian, {n:,} units x 5 formats, {AVG_BITS} avg bits\n")
    print("| solver | backend | status | time s | objective | vs best | bound / gap |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    forced = {"backend": "scipy", "mip_rel_gap": 1e-6, "time_limit_s": mip_time}
    runs = [("ilp", {}), ("lagrangian", {}), ("lagrangian", {"method": "bisection"})]
    for name, opts in runs + ([("ilp", forced)] if mip_time > 0 else []):
        t = time.perf_counter()
        sol = SOLVERS.get(name, **opts).solve(table, budget)
        rows.append((name, opts, sol, time.perf_counter() - t))
    best = min(r[2].objective for r in rows)
    for name, opts, sol, wall in rows:
        m = sol.meta
        backend = m.get("mip_backend") or opts.get("method", "hull" if name != "ilp" else "-")
        if name == "ilp" and opts:
            backend += " (mip_rel_gap 1e-6)"
        bound = m.get("mip_gap", m.get("gap"))
        print(
            f"| {name} | {backend} | {sol.status.value} | {wall:.2f} | {sol.objective:.9g} "
            f"| {sol.objective / best - 1:+.2e} | {bound:.2e} |"
        )
    print()


def threshold(seed: int) -> None:
    print("## ilp backends at small sizes (x 5 formats; time limit 10 s)\n")
    print("| units | binaries | cbc s (status) | scipy s (status) | objectives equal |")
    print("|---|---|---|---|---|")
    for n in (40, 200, 1000):
        table, _ = api_table(n, 5, seed)
        budget = Budget.avg_bits(AVG_BITS)
        out = {}
        for backend in ("cbc", "scipy"):
            t = time.perf_counter()
            sol = SOLVERS.get("ilp", backend=backend, time_limit_s=10).solve(table, budget)
            out[backend] = (time.perf_counter() - t, sol.status.value, sol.objective)
        same = math.isclose(out["cbc"][2], out["scipy"][2], rel_tol=2e-4)
        cbc, sci = out["cbc"], out["scipy"]
        print(f"| {n} | {5 * n} | {cbc[0]:.2f} ({cbc[1]}) | {sci[0]:.2f} ({sci[1]}) | {same} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=1_000_000)
    ap.add_argument("--formats", type=int, default=6, choices=range(2, len(BITS) + 1))
    ap.add_argument("--ilp-units", type=int, default=20_000)
    ap.add_argument("--api-units", type=int, default=100_000)
    ap.add_argument("--mip-time", type=float, default=60.0, help="0: skip the forced MIP")
    ap.add_argument("--threshold", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.units:
        lagrangian_at_scale(args.units, args.formats, args.seed)
    if args.api_units:
        api_overhead(args.api_units, args.formats, args.seed)
    if args.ilp_units:
        ilp_vs_lagrangian(args.ilp_units, args.seed, args.mip_time)
    if args.threshold:
        threshold(args.seed)


if __name__ == "__main__":
    main()
