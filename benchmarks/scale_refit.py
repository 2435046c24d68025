"""Least-squares refit of GPTQ's fp16 group scales (codes fixed) vs plain GPTQ, held-out KL.

python benchmarks/scale_refit.py int4-g64
"""

import copy
import sys
import time

import torch

import bitalloc as ba
from bitalloc.data import calibration, evaluate_lm, windows
from bitalloc.models import load
from bitalloc.nn.hessians import one_pass
from bitalloc.search.formats import parse_formats

torch.manual_seed(0)
model, tok = load("smollm2-135m")
calib = calibration(tok, 16, 512)
wiki = windows(tok, "wikipedia-heldout", 512, 8)
fmt = parse_formats([sys.argv[1]])[0]
mods = {
    n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers." in n
}
t0 = time.perf_counter()
H = one_pass(model, mods, calib.batches, calib.forward).hessians()
print("hessians", time.perf_counter() - t0, flush=True)
be = ba.backends.GptqBackend(sequential=False)
q1, q2 = copy.deepcopy(model), copy.deepcopy(model)
m1 = dict(q1.named_modules())
m2 = dict(q2.named_modules())
factors = {}
tot0 = tot1 = 0.0


def err(w, wh, h):
    d = (w - wh).double()
    return float(torch.einsum("nj,jk,nk->", d, h.double(), d))


for name, mod in mods.items():
    w = mod.weight.detach().float()
    h = H[name].float()
    r = be.quantize_weight(w, fmt, h, {})
    N, G, gs = r.codes.shape
    c = r.codes.float() - (r.zero.float().unsqueeze(-1) if r.zero is not None else 0)
    hr = h.view(G, gs, G, gs)
    P = torch.einsum("gjhk,nhk->ngjh", hr, c)  # [N,G,gs,G]
    A = torch.einsum("ngj,ngjh->ngh", c, P).double()
    hw = (w @ h).view(N, G, gs)
    b = torch.einsum("ngj,ngj->ng", c, hw).double()
    A = A + 1e-9 * A.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(G, dtype=A.dtype)
    s = torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)
    s = torch.where(s > 0, s, r.scale.double()).half().float()
    wh2 = (s.unsqueeze(-1) * c).view(N, G * gs)
    e0, e1 = err(w, r.weight, h), err(w, wh2, h)
    tot0 += e0
    tot1 += e1
    m1[name].weight.data.copy_(r.weight)
    m2[name].weight.data.copy_(wh2)
print(
    f"layer err sum {tot0:.4g} -> {tot1:.4g} ({tot1 / tot0:.3f})",
    time.perf_counter() - t0,
    flush=True,
)
res = evaluate_lm(model, {"gptq": q1, "refit": q2}, wiki)
for k, v in res.items():
    print("RESULT", sys.argv[1], k, f"kl {v.kl:.4f} ppl {v.ppl:.2f}", flush=True)
