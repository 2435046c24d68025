"""``bitalloc gguf``: build a plan's GGUF file with llama.cpp's own tools.

The float model is converted once by the tree's ``convert_hf_to_gguf.py`` (cached), the plan
becomes a ``--tensor-type-file`` and ``llama-quantize --pure`` writes the file; a plan built by
the ``ggml`` backend with an importance matrix gets the same ``E[x^2]`` as an imatrix file, so
the GGUF holds bit for bit the weights bitalloc searched with. The planned tensors' bytes in
the file are checked against the plan. Needs ``make llama-cpp``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import CliError, check_output, feasible_plan, load_model, refuse_violations


def _model_folder(name: str) -> Path:
    from ..models import names

    if name == "smollm2-135m":
        from ..models.smollm2 import cached_folder

        return cached_folder()
    if name in names():
        raise CliError(f"model {name!r} has no llama.cpp architecture; use a Llama-family model")
    return Path(name)


def float_gguf_of(name: str) -> Path:
    """The model's F32 GGUF, converted once by llama.cpp's converter into the cache."""
    from ..backends.export import gguf as G
    from ..models import cache_dir

    folder = _model_folder(name)
    source = cache_dir("gguf", Path(name).name) / "model-f32.gguf"
    if not source.is_file():
        print(f"converting {folder} to {source}")
        G.float_gguf(folder, source)
    return source


def cmd_gguf(args: argparse.Namespace) -> int:
    from ..backends.export import EXPORTERS
    from ..backends.export import gguf as G
    from ..backends.export.gguf_file import (
        embedding_searched,
        predicted_file_bytes,
        searches_embedding,
    )
    from ..toolkits import llamacpp

    sol = feasible_plan(args.plan)
    out = Path(args.out or Path(args.plan).with_suffix(".gguf"))
    check_output(str(out), "-o/--out")
    if args.embedding_type is not None and searches_embedding(sol.space):
        raise CliError(embedding_searched("--embedding-type"))
    bad = EXPORTERS.get("llama.cpp").check(sol)
    if bad:
        return refuse_violations("gguf", "llama.cpp", bad, "llama.cpp")
    llamacpp.tool("llama-quantize")  # ToolkitMissing names `make llama-cpp` before any work
    name = args.model or sol.meta.get("model")
    if not name and not args.float:
        raise CliError("the plan does not name its model; pass --model or --float")
    source = Path(args.float) if args.float else None
    if source is not None and not source.is_file():
        raise CliError(f"--float: no such GGUF file: {source}")
    imatrix = None
    record = sol.meta.get("backend") or {}
    wants = record.get("name") == "ggml" and record.get("options", {}).get("imatrix") != "off"
    if args.imatrix == "plan" and wants and sol.meta.get("calibration"):
        from ..backends.ggml import GgmlBackend
        from ..data.tokens import calibration_from_record

        model, tok = load_model(str(name))
        calib = calibration_from_record(tok, sol.meta["calibration"])
        moments = GgmlBackend(imatrix="on").quantized(model, sol.space, calib).importance
        importance = G.imatrix_of(moments, space=sol.space)
        imatrix = G.write_imatrix(importance, out.with_suffix(".imatrix.dat"))
    if source is None:
        source = float_gguf_of(str(name))
    embedding = args.embedding_type or (sol.meta.get("gguf") or {}).get("embedding_type")
    G.quantize(sol, source, out, imatrix=imatrix, embedding_type=embedding)
    problems = G.check_bytes(sol, out)
    held = G.tensors(out)  # read once: gguf-py parses the whole tokenizer each time
    measured = sum(held[n].nbytes for n in EXPORTERS.get("llama.cpp").types(sol))
    whole = predicted_file_bytes(sol, source, embedding_type=embedding, imatrix=imatrix)
    if whole != G.file_bytes(out):
        problems.append(f"whole file: predicted {whole:,} B, written {G.file_bytes(out):,} B")
    print(f"GGUF written to {out} ({G.file_bytes(out):,} bytes; predicted {whole:,})")
    print(
        f"planned tensors: file {measured:,} bytes, plan predicted {sol.nbytes:,} bytes"
        + ("" if not problems else "  MISMATCH: " + "; ".join(problems[:5]))
        + (f"; imatrix {imatrix}" if imatrix else "")
    )
    return 0 if not problems else 1


def register(sub: Any) -> None:
    """Add ``bitalloc gguf`` to ``bitalloc``'s subparsers."""
    g = sub.add_parser("gguf", help="build a plan's GGUF with llama.cpp's llama-quantize")
    g.add_argument("plan")
    g.add_argument("-o", "--out", help="GGUF to write (default: PLAN.gguf)")
    g.add_argument("--model", help="override the model named in the plan")
    g.add_argument("--float", help="F32/F16 GGUF of the model (default: converted and cached)")
    g.add_argument(
        "--embedding-type",
        help="ggml type of the token embedding (default: the plan's, from search --file-bytes; "
        "else Q8_0)",
    )
    g.add_argument(
        "--imatrix",
        choices=("plan", "off"),
        default="plan",
        help="plan: the plan's E[x^2] when its ggml backend used one (default); off: none",
    )
    g.set_defaults(func=cmd_gguf)
