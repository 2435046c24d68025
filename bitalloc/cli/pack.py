"""``bitalloc pack``: quantize a model per a plan and save the packed checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import CliError, check_output, load_model


def cmd_pack(args: argparse.Namespace) -> int:
    from ..backends.packed import checkpoint_nbytes, save_packed
    from ..search.solution import Solution

    sol = Solution.load(args.plan)
    if not sol.success:  # before anything is written: an existing checkpoint stays as it is
        raise CliError(
            f"plan {args.plan!r} has status {sol.status.value} and no formats to pack"
            + (f": {sol.message}" if sol.message else "")
        )
    out = Path(args.out or Path(args.plan).with_suffix(".safetensors"))
    check_output(str(out), "-o/--out")
    model_name = args.model or sol.meta.get("model")
    if not model_name:
        raise CliError("the plan does not name its model; pass --model")
    model, tok = load_model(model_name)
    if args.quantizer == "gptq" and args.mask_score != "magnitude":
        raise CliError("--mask-score applies to --quantizer rtn only (gptq prunes with SparseGPT)")
    calib = None
    if args.mask_score == "wanda" or args.quantizer == "gptq":  # Wanda norms / GPTQ Hessians
        from ..data import calibration

        calib = calibration(tok, args.n_samples, args.seq_len)
    save_packed(model, sol, out, mask_score=args.mask_score, calib=calib, quantizer=args.quantizer)
    measured = checkpoint_nbytes(out)
    print(f"packed checkpoint written to {out}")
    print(
        f"weights: measured {measured:,} bytes, plan predicted {sol.nbytes:,} bytes "
        f"({sol.avg_bits:.4f} avg bits){'' if measured == sol.nbytes else '  MISMATCH'}"
    )
    return 0 if measured == sol.nbytes else 1


def register(sub: Any) -> None:
    """Add ``bitalloc pack`` to ``bitalloc``'s subparsers."""
    pk = sub.add_parser("pack", help="quantize a model per a plan and save packed safetensors")
    pk.add_argument("plan")
    pk.add_argument("-o", "--out", help="checkpoint to write (default: PLAN.safetensors)")
    pk.add_argument("--model", help="override the model named in the plan")
    pk.add_argument(
        "--mask-score",
        choices=("magnitude", "wanda"),
        default="magnitude",
        help="how sparse formats choose the pruned weights",
    )
    pk.add_argument(
        "--quantizer",
        choices=("rtn", "gptq"),
        default="rtn",
        help="rtn: round-to-nearest; gptq: GPTQ/SparseGPT codes from calibration windows",
    )
    pk.add_argument("--n-samples", type=int, default=16, help="calibration windows (wanda, gptq)")
    pk.add_argument("--seq-len", type=int, default=512)
    pk.set_defaults(func=cmd_pack)
