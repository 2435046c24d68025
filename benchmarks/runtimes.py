"""bitalloc's GGUF against llama.cpp's own recipes at the same file size, measured by llama.cpp.

For each llama.cpp recipe (``--recipes``, e.g. ``IQ4_NL:pure`` = ``llama-quantize --pure``), with
and without an importance matrix (llama.cpp's own, from ``llama-imatrix`` on the calibration
text), on SmolLM2-135M:

1. the recipe's GGUF is built from the F32 GGUF of the float model (``convert_hf_to_gguf.py``
   of the same tree);
2. bitalloc searches a plan with ``target="llama.cpp"`` (ggml types; ``W_hat`` from ggml's own
   quantizer, with bitalloc's ``E[x^2]`` imatrix when the recipe has one) under a byte budget
   equal to the recipe file's bytes of the searched (linear) tensors, keeps the recipe's
   token-embedding type, and ``llama-quantize`` builds it; with ``--embedding searched`` the
   tied token embedding / ``lm_head`` is a searched unit too and the budget is the recipe's
   linear tensors plus its token embedding (the same file size);
3. both files are measured by ``llama-perplexity --kl-divergence`` on held-out Wikipedia
   against the F32 model (mean KLD, ppl), and by bitalloc's own held-out KL on the weights
   decoded from each file (so the two measurements can be compared).

    python benchmarks/runtimes.py [--recipes IQ4_NL:pure,IQ4_XS:pure,Q4_0:pure,Q3_K_M,Q2_K]
        [--imatrix off,on] [--effort ilp|fast|default] [--without q4_1]
        [--embedding recipe|searched] [--chunks 16] [--out runs/runtimes]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

import bitalloc as ba
from bitalloc.backends.export import gguf as G
from bitalloc.backends.export.llamacpp import gguf_name
from bitalloc.backends.ggml import GgmlBackend
from bitalloc.backends.quantizer import Prepared
from bitalloc.data import calibration, corpora, evaluate_lm, windows
from bitalloc.models import cache_dir, load
from bitalloc.models.smollm2 import cached_folder
from bitalloc.search.pipeline import refine
from bitalloc.search.targets import LLAMACPP_MENU

RECIPES = "IQ4_NL:pure,IQ4_XS:pure,Q4_0:pure,Q3_K_M,Q2_K"


def linear_names(model: Any) -> list[str]:
    space = ba.SearchSpace.from_model(model, target="llama.cpp", tie=None)
    return [str(gguf_name(u.fqn)) for u in space.units]


def load_into(model: Any, path: Path) -> Any:
    """A copy of ``model`` whose searched weights are the ones decoded from GGUF ``path``."""
    out = copy.deepcopy(model)
    space = ba.SearchSpace.from_model(model, target="llama.cpp", tie=None)
    names = {str(gguf_name(u.fqn)): u.fqn for u in space.units}
    stored = G.stored_weights(path, list(names))
    mods = dict(out.named_modules())
    with torch.no_grad():
        for name, fqn in names.items():
            mods[fqn].weight.copy_(torch.from_numpy(stored[name]))
        emb = G.stored_weights(path, ["token_embd.weight"])["token_embd.weight"]
        out.get_input_embeddings().weight.copy_(torch.from_numpy(emb))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", default=RECIPES)
    p.add_argument("--imatrix", default="off,on")
    p.add_argument(
        "--effort",
        default="ilp",
        help="'ilp' (fisher table + exact solve), or the default pipeline's effort: fast, default",
    )
    p.add_argument("--chunks", type=int, default=16, help="llama-perplexity chunks of 512")
    p.add_argument("--n-samples", type=int, default=16)
    p.add_argument("--windows", type=int, default=8, help="bitalloc's own held-out windows")
    p.add_argument("--out", default="runs/runtimes")
    p.add_argument(
        "--without",
        default="",
        help="ggml types to leave out of bitalloc's menu, e.g. q4_1 (the float model's own grid)",
    )
    p.add_argument(
        "--embedding",
        choices=("recipe", "searched"),
        default="recipe",
        help="recipe: the token embedding keeps the recipe's type; searched: the tied "
        "embedding / lm_head is a searched unit within the same file bytes",
    )
    args = p.parse_args()
    searched = args.embedding == "searched"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    model, tok = load("smollm2-135m")
    calib = calibration(tok, args.n_samples, 512)
    f32 = out / "smollm2-f32.gguf"
    if not f32.is_file():
        G.float_gguf(cached_folder(), f32)
    heldout, calib_txt = out / "wiki-heldout.txt", out / "wiki-calib.txt"
    heldout.write_text(corpora.text("wikipedia-heldout"))
    calib_txt.write_text(corpora.text("wikipedia-calib"))
    base = out / f"base-{args.chunks}.kld"
    if not base.is_file():
        G.kl_base(f32, heldout, base, chunks=args.chunks)
    lcpp_imatrix = out / "imatrix-llama.dat"
    if not lcpp_imatrix.is_file():
        G.imatrix_from_text(f32, calib_txt, lcpp_imatrix, chunks=args.n_samples)
    wiki = windows(tok, "wikipedia-heldout", 512, args.windows)
    linear = linear_names(model)

    tables: dict[str, Any] = {}

    def measure(key: str, path: Path) -> dict[str, Any]:
        kld = G.kl_divergence(path, base)
        held = G.tensors(path)
        own = evaluate_lm(model, {"m": load_into(model, path)}, wiki)["m"]
        row = {
            "file_bytes": G.file_bytes(path),
            "linear_bytes": sum(held[n].nbytes for n in linear),
            "embd": held["token_embd.weight"].type,
            "embd_bytes": held["token_embd.weight"].nbytes,
            "kld": kld.mean_kld,
            "kld_err": kld.kld_err,
            "ppl": kld.ppl,
            "ppl_base": kld.ppl_base,
            "own_kl": own.kl,
            "own_ppl": own.ppl,
        }
        results[key] = {**results.get(key, {}), **row}
        results_path.write_text(json.dumps(results, indent=1))
        print(key, json.dumps(row), flush=True)
        return row

    for im in args.imatrix.split(","):
        use = im == "on"
        backend = GgmlBackend(imatrix="on" if use else "off")
        if im not in tables:
            t0 = time.perf_counter()
            drop = {k for k in args.without.split(",") if k}
            menu = [k for k in LLAMACPP_MENU if k not in drop]
            space = ba.SearchSpace.from_model(model, menu, target="llama.cpp", lm_head=searched)
            prepared = Prepared(backend, model, space, calib)
            table = ba.estimate(
                model, space, calib, "fisher", backend=prepared, cache_dir=cache_dir()
            )
            tables[im] = (space, prepared, table, time.perf_counter() - t0)
        space, prepared, table, t_table = tables[im]
        ours_imatrix = None
        if use:
            ours_imatrix = G.write_imatrix(
                G.imatrix_of(prepared.source.source.importance, space=space),
                out / f"imatrix-bitalloc{'-emb' if searched else ''}.dat",
            )
        for spec in args.recipes.split(","):
            ftype, _, pure = spec.partition(":")
            name = f"{ftype}{'-pure' if pure else ''}{'-imatrix' if use else ''}"
            rfile = out / f"{name}.gguf"
            if not rfile.is_file():
                G.recipe(f32, rfile, ftype, pure=bool(pure), imatrix=lcpp_imatrix if use else None)
            ref = results.get(f"llama.cpp {name}") or measure(f"llama.cpp {name}", rfile)
            tag = "" if args.effort == "ilp" else f"-{args.effort}"
            tag += f"-no-{args.without}" if args.without else ""
            tag += "-emb" if searched else ""
            key = f"bitalloc{tag} @ {name}"
            if key in results:
                continue
            t0 = time.perf_counter()
            embd = G.tensors(rfile)["token_embd.weight"].nbytes if searched else 0
            budget = ba.Budget.bytes(ref["linear_bytes"] + embd)
            if args.effort == "ilp":
                plan = ba.solve(table, budget, "ilp")
            else:
                plan = refine(model, calib, table, budget, backend=prepared, effort=args.effort)
            t_search = time.perf_counter() - t0
            plan.save(out / f"plan-{key.split(' ')[0]}-{name}.json")
            bfile = G.quantize(
                plan,
                f32,
                out / f"{key.split(' ')[0]}-{name}.gguf",
                imatrix=ours_imatrix,
                embedding_type=None if searched else ref["embd"],
            )
            problems = G.check_bytes(plan, bfile)
            row = measure(key, bfile)
            results[key].update(
                {
                    "predicted_linear_bytes": plan.nbytes,
                    "bytes_match": not problems
                    and plan.nbytes
                    == row["linear_bytes"] + (row["embd_bytes"] if searched else 0),
                    "search_s": t_search,
                    "table_s": t_table,
                    "formats": dict(sorted(Counter(plan.choice).items())),
                }
            )
            results_path.write_text(json.dumps(results, indent=1))
    print(report(results))


def report(results: dict[str, Any]) -> str:
    """Markdown rows, grouped by recipe (llama.cpp's file first), best KLD in bold."""
    by_recipe: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, r in results.items():
        who, _, recipe = key.partition(" ")
        by_recipe.setdefault(recipe.removeprefix("@ "), []).append((who, r))
    lines = [
        "| recipe | file by | file bytes | mean KLD (llama.cpp) | ppl (llama.cpp) | "
        "KL (bitalloc, 8 windows) | bitalloc's types |",
        "|---|---|---|---|---|---|---|",
    ]
    for recipe, rows in by_recipe.items():
        best = min(r["kld"] for _, r in rows)
        for who, r in sorted(rows, key=lambda x: x[0] != "llama.cpp"):
            kld = f"{r['kld']:.4f} ± {r['kld_err']:.4f}"
            kld = f"**{kld}**" if r["kld"] == best else kld
            types = ", ".join(f"{k} {v}" for k, v in (r.get("formats") or {}).items())
            lines.append(
                f"| {recipe} | {who} | {r['file_bytes']:,} | {kld} | {r['ppl']:.2f} | "
                f"{r['own_kl']:.4f} | {types} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
