"""llm-compressor, in its own virtual environment, driven from bitalloc's.

No llm-compressor release installs beside bitalloc's pins: 0.14 pins transformers <= 5.17 and
0.12-0.13 pin torch <= 2.12 or transformers <= 5.14. ``make llm-compressor`` makes a venv
(:data:`TOOLKIT`: torch 2.13.0 from the local wheel file, llm-compressor 0.14.0.1 with
transformers 5.17.0 and compressed-tensors 0.19.0), once per machine. :func:`oneshot` runs
``llmcompressor_worker.py``: llm-compressor's ``oneshot`` with a ``GPTQModifier`` or
``QuantizationModifier`` whose ``config_groups`` and ``ignore`` are the exported
``quantization_config``'s, on the calibration batches given, and ``save_pretrained(...,
save_compressed=True)``: a compressed-tensors checkpoint bitalloc loads and measures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .venv import VenvToolkit

VERSION = "0.14.0.1"
PINS = (
    "torch==2.13.0",
    f"llmcompressor=={VERSION}",
    "transformers==5.17.0",
    "compressed-tensors==0.19.0",
)
TOOLKIT = VenvToolkit(
    name="llm-compressor",
    version=VERSION,
    env_var="BITALLOC_LLMCOMPRESSOR",
    make_target="llm-compressor",
    steps=((("torch==2.13.0",), {}), (PINS, {})),
)
WORKER = Path(__file__).with_name("llmcompressor_worker.py")
MODIFIERS = ("gptq", "rtn")


def python() -> Path:
    return TOOLKIT.python()


def oneshot(
    model_dir: str | os.PathLike[str],
    config: dict,
    calib: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    modifier: str = "gptq",
    timeout: float = 7200.0,
) -> str:
    """llm-compressor's ``oneshot`` of ``model_dir`` with the recipe of ``config`` (the
    exported ``quantization_config``), ``modifier`` ``"gptq"`` (``GPTQModifier``) or ``"rtn"``
    (``QuantizationModifier``, min-max), on the token batches ``batch_i`` of the safetensors
    file ``calib``; the compressed checkpoint is written to ``out``."""
    if modifier not in MODIFIERS:
        raise ValueError(f"`modifier` must be one of {MODIFIERS}, got {modifier!r}")
    paths: list[object] = [Path(p) for p in (model_dir, calib, out)]
    return TOOLKIT.run_worker(WORKER, [*paths, modifier], config=config, timeout=timeout)


def main(argv: Sequence[str] | None = None) -> int:
    return TOOLKIT.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
