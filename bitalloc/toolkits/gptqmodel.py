"""GPTQModel, in its own virtual environment, driven from bitalloc's.

GPTQModel cannot live beside bitalloc's pins: 7.7 needs torch >= 2.14.1 (on these machines a
CUDA build of several GB) and 7.4 pins numpy 2.2.6 and imports torchvision, which does not
load beside the torch 2.13 CPU build. So ``make gptqmodel`` makes a separate venv
(:data:`TOOLKIT`: torch 2.14.1 and torchvision 0.29.1 from the local wheel files, GPTQModel
built from its sdist with ``BUILD_CUDA_EXT=0``), once per machine. :func:`quantize` runs
``gptqmodel_worker.py`` with ``GPTQMODEL_CPU_WORKERS=2`` (on 2 cores GPTQModel's thread pool
refuses to start otherwise): GPTQModel quantizes the float model folder with the exported
``QuantizeConfig`` (its own GPTQ, or bitalloc's codes given as ``codes``), saves its
checkpoint, loads it back with its own CPU kernels, and writes the dequantized weights and the
logits of its own forward.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .venv import VenvToolkit

VERSION = "7.7.0"
PINS = (
    "torch==2.14.1",
    "torchvision==0.29.1",
    "transformers==5.25.0",
    "numpy==2.4.6",
    "requests==2.34.2",
)
TOOLKIT = VenvToolkit(
    name="gptqmodel",
    version=VERSION,
    env_var="BITALLOC_GPTQMODEL",
    make_target="gptqmodel",
    steps=(
        ((*PINS, "setuptools", "wheel"), {}),
        (("--no-build-isolation", f"gptqmodel=={VERSION}", *PINS), {"BUILD_CUDA_EXT": "0"}),
    ),
    worker_env={"GPTQMODEL_CPU_WORKERS": "2"},
)
WORKER = Path(__file__).with_name("gptqmodel_worker.py")


def python() -> Path:
    return TOOLKIT.python()


def quantize(
    model_dir: str | os.PathLike[str],
    config: dict,
    calib: str | os.PathLike[str],
    out: str | os.PathLike[str],
    probe: str | os.PathLike[str],
    *,
    codes: str | os.PathLike[str] | None = None,
    timeout: float = 3600.0,
) -> str:
    """Quantize ``model_dir`` with GPTQModel (``config``: the exported ``quantization_config``;
    ``calib``: a safetensors file of token ids ``batch_i``), save the checkpoint to ``out`` and
    write ``probe`` (safetensors: the dequantized weights of every quantized layer and
    ``__logits__`` of GPTQModel's own forward on ``__probe_ids__`` read from ``calib``).

    ``codes`` (safetensors: ``NAME.weight``, ``NAME.scale``, ``NAME.zero`` per planned layer)
    replaces GPTQModel's GPTQ solve with those weights; GPTQModel still packs, saves and loads
    the checkpoint."""
    paths = [Path(p) for p in (model_dir, calib, out, probe)]
    if codes is not None:
        paths.append(Path(codes))
    return TOOLKIT.run_worker(WORKER, paths, config=config, timeout=timeout)


def main(argv: Sequence[str] | None = None) -> int:
    return TOOLKIT.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
