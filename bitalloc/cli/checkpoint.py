"""``bitalloc checkpoint``: write a plan as a compressed-tensors checkpoint vLLM and
transformers load (``pack-quantized``, one config group per format).

The plan's own backend (rtn or gptq, with its options and its calibration windows) makes the
codes, so the checkpoint holds exactly the weights the plan was searched with; compressed-tensors'
compressor packs them. The tokenizer is saved beside the weights and every quantized layer's
bytes in the file are checked against the plan (the 16-byte ``weight_shape`` per layer aside).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    CliError,
    check_output_dir,
    feasible_plan,
    load_model,
    plan_calibration,
    refuse_violations,
)


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from ..backends.export import EXPORTERS
    from ..backends.export import ct_checkpoint as ct
    from ..search.api import plan_backend

    sol = feasible_plan(args.plan)
    out = Path(args.out or Path(args.plan).with_suffix(""))
    check_output_dir(str(out), "-o/--out")
    bad = EXPORTERS.get("compressed-tensors", runtime=args.runtime).check(sol)
    if bad:
        target = f"compressed-tensors on {args.runtime}"
        return refuse_violations("checkpoint", target, bad, "compressed-tensors")
    backend = plan_backend(sol) if args.quantizer == "plan" else args.quantizer
    name = backend if isinstance(backend, str) else getattr(type(backend), "name", "")
    if name not in ("rtn", "gptq"):
        raise CliError(
            f"the plan was built by the {name!r} backend; compressed-tensors checkpoints take "
            "rtn or gptq codes: pass --quantizer rtn or --quantizer gptq"
        )
    model_name = args.model or sol.meta.get("model")
    if not model_name:
        raise CliError("the plan does not name its model; pass --model")
    model, tok = load_model(model_name)
    calib = plan_calibration(tok, sol, "gptq", args)  # rtn's clip search uses it too
    layers = ct.save_checkpoint(
        model, sol, out, quantizer=backend, calib=calib, runtime=args.runtime, tokenizer=tok
    )
    stored = sum(lay.stored for lay in layers)
    planned = sum(lay.planned for lay in layers)
    shape = ct.SHAPE_BYTES * len(layers)
    ok = stored == planned + shape
    print(f"compressed-tensors checkpoint written to {out}")
    print(
        f"quantized layers: file {stored:,} bytes = plan {planned:,} + weight_shape {shape:,}"
        + ("" if ok else "  MISMATCH (rows or columns not a multiple of 32/bits: padding)")
    )
    print(f"load: bitalloc.backends.export.ct_checkpoint.load_checkpoint({str(out)!r})")
    return 0


def register(sub: Any) -> None:
    """Add ``bitalloc checkpoint`` to ``bitalloc``'s subparsers."""
    c = sub.add_parser("checkpoint", help="write a plan as a compressed-tensors checkpoint")
    c.add_argument("plan")
    c.add_argument("-o", "--out", help="folder to write (default: PLAN without .json)")
    c.add_argument("--model", help="override the model named in the plan")
    c.add_argument(
        "--quantizer",
        choices=("plan", "rtn", "gptq"),
        default="plan",
        help="plan: the plan's own backend (default); rtn or gptq: that backend's defaults",
    )
    c.add_argument("--runtime", choices=("vllm", "transformers"), default="vllm")
    c.add_argument(
        "--n-samples", type=int, default=16, help="calibration windows without a record"
    )
    c.add_argument("--seq-len", type=int, default=512)
    c.set_defaults(func=cmd_checkpoint)
