"""Which grid: minmax vs activation-weighted clip search, for RTN and GPTQ, on SmolLM2-135M.

Uniform plans (every searched layer in one format) so only the quantizer differs. Variants:

- ``rtn minmax``: the data-free range;
- ``rtn mse``: clip search with uniform importance (plain weight MSE);
- ``rtn E[x^2] 20``: clip search weighted by ``E[x_j^2]``, 20 shrink factors on [0.5, 1];
- ``rtn E[x^2] fine``: 50 factors on [0.3, 1];
- ``rtn E[x^2] c2f`` (the library default): 16 factors on [0.25, 1] + 8 around each
  group's best;
- ``rtn block-H``: the output error ``dW_g H_gg dW_g^T`` with the group's block of the
  Hessian instead of its diagonal (50 factors on [0.3, 1]);
- ``gptq minmax`` / ``gptq search``: GPTQ (sequential) on the minmax / searched grid.

    python benchmarks/quantizer.py [--formats int2-g64,int3-g64,int4-g64] [--n-samples 16]
        [--windows 16] [--lee-windows 8] [--variants ...]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import bitalloc as ba
from bitalloc.data import calibration, evaluate_lm, windows
from bitalloc.kernels import grid as G
from bitalloc.models import load
from bitalloc.nn.hessians import one_pass

VARIANTS = (
    "rtn minmax,rtn mse,rtn E[x^2] 20,rtn E[x^2] fine,rtn E[x^2] c2f,rtn block-H,"
    "gptq minmax,gptq search"
)


def block_h(w: torch.Tensor, bits: int, gs: int, h: torch.Tensor) -> torch.Tensor:
    """Clip search on ``sum_g dW_g H_gg dW_g^T`` (the study's output-error criterion)."""
    g = G.grouped(w, gs)
    n_groups, k = g.shape[1], g.shape[2]
    hb = torch.stack([h[i * k : (i + 1) * k, i * k : (i + 1) * k] for i in range(n_groups)])
    hb = hb.float()
    lo0, hi0 = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    best = err_best = None
    for a in torch.linspace(1.0, 0.3, 50).tolist():
        s, z = G._scale_zero(lo0 * a, hi0 * a, bits, False)
        wh = G.decode(G.encode(g, s, z, bits), s, z)
        d = wh - g
        err = torch.einsum("ngi,gij,ngj->ng", d, hb, d)
        if best is None or err_best is None:
            best, err_best = wh, err
        else:
            better = err < err_best
            best = torch.where(better[..., None], wh, best)
            err_best = torch.minimum(err, err_best)
    assert best is not None
    return best.reshape(w.shape)


def rtn_variant(model, lins, hess, name: str, bits: int, gs: int):  # noqa: ANN001, ANN201
    m = copy.deepcopy(model)
    mods = dict(m.named_modules())
    with torch.no_grad():
        for fqn in lins:
            w = mods[fqn].weight
            imp = torch.diagonal(hess[fqn]).float()  # 2 E[x^2]: the same argmin as E[x^2]
            if name == "rtn minmax":
                q = ba.kernels.fake_quantize(w, bits, gs)
            elif name == "rtn mse":
                q = ba.kernels.fake_quantize(w, bits, gs, importance=torch.ones_like(imp))
            elif name == "rtn E[x^2] 20":
                q = G.decode(
                    *G.quantize(w, bits, gs, False, imp, steps=20, min_shrink=0.5, refine=0)
                ).reshape(w.shape)
            elif name == "rtn E[x^2] fine":
                q = G.decode(
                    *G.quantize(w, bits, gs, False, imp, steps=50, min_shrink=0.3, refine=0)
                ).reshape(w.shape)
            elif name == "rtn E[x^2] c2f":
                q = ba.kernels.fake_quantize(w, bits, gs, importance=imp)
            elif name == "rtn block-H":
                q = block_h(w, bits, gs, hess[fqn].double())
            else:
                raise ValueError(name)
            w.copy_(q)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="int2-g64,int3-g64,int4-g64")
    ap.add_argument("--variants", default=VARIANTS)
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--lee-windows", type=int, default=8)
    args = ap.parse_args()
    model, tok = load("smollm2-135m")
    calib = calibration(tok, args.n_samples, args.seq_len)
    space = ba.SearchSpace.from_model(model, args.formats.split(","), tie=None)
    lins = {u.fqn: model.get_submodule(u.fqn) for u in space.units}
    t0 = time.perf_counter()
    hess = one_pass(model, lins, calib.batches, calib.forward).hessians()
    t_h = time.perf_counter() - t0
    wiki = windows(tok, "wikipedia-heldout", args.seq_len, args.windows)
    lee = windows(tok, "lee", args.seq_len, args.lee_windows)
    rows, secs = [], {}
    for key in args.formats.split(","):
        f = ba.QuantFormat.parse(key)
        models = {}
        for name in args.variants.split(","):
            t0 = time.perf_counter()
            if name.startswith("gptq"):
                m = copy.deepcopy(model)
                grid = "minmax" if name == "gptq minmax" else "search"
                plan = ba.Solution(
                    space=space, choice=(key,) * len(space), status=ba.Status.FEASIBLE
                )
                ba.apply(m, plan, ba.backends.GptqBackend(grid=grid), calib=calib)
            else:
                m = rtn_variant(model, lins, hess, name, f.bits, f.group_size)
            secs[(key, name)] = time.perf_counter() - t0
            models[name] = m
        w = evaluate_lm(model, models, wiki)
        e = evaluate_lm(model, models, lee)
        rows += [(key, n, w[n], e[n]) for n in models]
        ref = (w["reference"].ppl, e["reference"].ppl)
        del models
    print(
        f"SmolLM2-135M, uniform plans; importance/Hessians from {args.n_samples} x "
        f"{args.seq_len} wikipedia-calib ({t_h:.0f} s); held-out {args.windows} x {args.seq_len}"
        f" Wikipedia (float ppl {ref[0]:.2f}), {args.lee_windows} x {args.seq_len} Lee "
        f"(float ppl {ref[1]:.2f}).\n"
    )
    print("| format | quantizer | wiki KL | wiki ppl | lee KL | lee ppl | build s |")
    print("|---|---|---|---|---|---|---|")
    for key, name, w_s, e_s in rows:
        print(
            f"| {key} | {name} | {w_s.kl:.4f} | {w_s.ppl:.2f} | {e_s.kl:.4f} | {e_s.ppl:.2f} | "
            f"{secs[(key, name)]:.1f} |"
        )


if __name__ == "__main__":
    main()
