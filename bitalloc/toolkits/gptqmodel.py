"""GPTQModel, in its own virtual environment, driven from bitalloc's.

GPTQModel cannot live beside bitalloc's pins: 7.7 needs torch >= 2.14.1 (on these machines a
CUDA build of several GB) and 7.4 pins numpy 2.2.6 and imports torchvision, which does not
load beside the torch 2.13 CPU build. So ``make gptqmodel`` (``python -m
bitalloc.toolkits.gptqmodel build``) makes a separate venv in ``$BITALLOC_GPTQMODEL`` (default
``<bitalloc cache>/gptqmodel/<version>``) with :data:`PINS` (torch 2.14.1 and torchvision
0.29.1 from the local wheel files, GPTQModel built from its sdist with ``BUILD_CUDA_EXT=0``),
once per machine. :func:`quantize` runs :mod:`gptqmodel_worker` (a script using only that
venv's packages) with ``GPTQMODEL_CPU_WORKERS=2``: GPTQModel quantizes the float model folder
with the exported ``QuantizeConfig``, saves its checkpoint, loads it back with its own CPU
kernels, and writes the dequantized weights and the logits of its own forward.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..models.cache import cache_dir
from .process import ToolFailed, ToolkitMissing, run

VERSION = "7.7.0"
PINS = (
    "torch==2.14.1",
    "torchvision==0.29.1",
    "transformers==5.25.0",
    "numpy==2.4.6",
    "requests==2.34.2",
)
ENV_VAR = "BITALLOC_GPTQMODEL"
MAKE_HINT = "run `make gptqmodel` (a separate venv with GPTQModel and its torch, once)"
WORKER = Path(__file__).with_name("gptqmodel_worker.py")


def home() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else cache_dir("gptqmodel", VERSION)


def python() -> Path:
    """The venv's interpreter; :class:`ToolkitMissing` naming ``make gptqmodel`` if absent."""
    exe = home() / "venv" / "bin" / "python"
    if not (home() / "built.json").is_file() or not exe.is_file():
        raise ToolkitMissing(f"GPTQModel {VERSION} is not installed in {home()}: {MAKE_HINT}")
    return exe


def build(*, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Create the venv and install :data:`PINS` and GPTQModel (a no-op when done)."""
    root = home()
    stamp = root / "built.json"
    if stamp.is_file() and not force:
        log(f"GPTQModel {VERSION} already installed in {root}")
        return root
    stamp.unlink(missing_ok=True)
    venv = root / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    log(f"creating {venv}")
    run([sys.executable, "-m", "venv", venv], timeout=600)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    log(f"installing {', '.join(PINS)} (torch from the local wheel files)")
    run([*pip, *PINS, "setuptools", "wheel"], timeout=3600)
    log(f"building GPTQModel {VERSION} from its sdist (BUILD_CUDA_EXT=0)")
    run(
        [*pip, "--no-build-isolation", f"gptqmodel=={VERSION}", *PINS],
        timeout=3600,
        env={"BUILD_CUDA_EXT": "0"},
    )
    stamp.write_text(json.dumps({"gptqmodel": VERSION, "pins": PINS}, indent=1))
    log(f"GPTQModel {VERSION} installed in {root}")
    return root


def quantize(
    model_dir: str | os.PathLike[str],
    config: dict,
    calib: str | os.PathLike[str],
    out: str | os.PathLike[str],
    probe: str | os.PathLike[str],
    *,
    timeout: float = 3600.0,
) -> str:
    """Quantize ``model_dir`` with GPTQModel (``config``: the exported ``quantization_config``;
    ``calib``: a safetensors file of token ids ``batch_i``), save the checkpoint to ``out`` and
    write ``probe`` (safetensors: the dequantized weights of every quantized layer and
    ``__logits__`` of GPTQModel's own forward on ``__probe_ids__`` read from ``calib``)."""
    exe = python()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    cfg = Path(out).with_name(Path(out).name + ".config.json")
    cfg.write_text(json.dumps(config))
    try:
        args: Sequence = [exe, "-I", WORKER, model_dir, cfg, calib, out, probe]  # -I: not this dir
        return run(args, timeout=timeout, env={"GPTQMODEL_CPU_WORKERS": "2"})
    finally:
        cfg.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bitalloc.toolkits.gptqmodel")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="create GPTQModel's venv (once per machine)")
    b.add_argument("--force", action="store_true")
    sub.add_parser("where", help="print the venv's python")
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            build(force=args.force)
        else:
            print(python())
    except (ToolFailed, ToolkitMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
