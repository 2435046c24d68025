"""Precomputed quantized weights per (unit, format): EvoPress's compressed-layer database.

EvoPress (Sieberling et al., ICML 2025, arXiv 2410.14649; algorithms.md section 1.1)
compresses every unit at every level once and then scores configurations by swapping those
tensors into the model. :class:`VariantCache` is that database: each variant is the backend's
own ``W_hat`` (:meth:`Backend.quantized`, whose statistics are collected once from the original
weights), so a plan assembled from variants computes exactly what
``bitalloc.apply(model, plan, backend, calib=calib)`` does (same grid, same sparsity masks; for
gptq, ``apply`` with ``sequential=False``). It is never re-quantized afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..nn.units import unit_modules, unit_weight
from ..search.space import SearchSpace

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from torch import nn


class VariantCache:
    """Quantized copies of every unit's weight, one per (unit, format), built on first use.

    In memory (default) variants live next to the weights (same device and dtype). With
    ``cache_dir`` every variant is a safetensors file ``cache_dir/<model fingerprint>-<backend>-
    <hash of the backend options and calibration>/<unit>/<format>.safetensors``
    (written atomically, read with ``safetensors.torch.load_file``; never pickle), read from
    disk whenever it is needed instead of being kept in memory, and reused by later runs.

    A variant must be built while the model holds its original weights (``get`` builds when
    missing; :class:`~bitalloc.backends.kl_evaluator.KLEvaluator` puts the originals back
    first); backends that read activations (Wanda masks, GPTQ) see the unmodified model, as in
    ``apply``.

    Args:
        model: the model whose weights ``space`` names; its current weights are the originals.
        space: the search space.
        backend: a registered backend name or instance (default ``"rtn"``).
        calib: calibration data passed to the backend's ``apply`` (data-aware backends).
        cache_dir: folder for the on-disk variants, or ``None`` for memory.
    """

    def __init__(
        self,
        model: nn.Module,
        space: SearchSpace,
        *,
        backend: Any = "rtn",
        calib: Any = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        from . import BACKENDS

        if not isinstance(space, SearchSpace):
            raise TypeError(f"`space` must be a SearchSpace, got {type(space).__name__}")
        self.backend = BACKENDS.resolve(backend)
        modules = unit_modules(model, space.units)  # ValueError when the model lacks a unit
        self.model, self.space, self.calib = model, space, calib
        self._views = [unit_weight(modules[u.name], u) for u in space.units]
        self.originals = [v.detach().clone() for v in self._views]
        self._memory: dict[tuple[int, str], torch.Tensor] = {}
        self.root: Path | None = None
        if cache_dir is not None:
            from ..models import fingerprint
            from .quantizer import describe

            opts = describe(self.backend)
            if calib is not None:
                from ..search.calibration import as_calibration

                opts = {**opts, "calibration": as_calibration(calib).fingerprint()}
            tag = hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode())
            name = f"{fingerprint(model)}-{opts['name']}-{tag.hexdigest()[:8]}"
            self.root = Path(cache_dir) / name
        self.built = 0
        self._source: Any = None

    def view(self, index: int) -> torch.Tensor:
        """The live weight (a view into the model) of unit ``index``."""
        return self._views[index]

    def has(self, index: int, key: str) -> bool:
        """Whether the variant exists already (in memory or on disk)."""
        if self.root is None:
            return (index, key) in self._memory
        return self._path(index, key).exists()

    def get(self, index: int, key: str) -> torch.Tensor:
        """Variant of unit ``index`` in format ``key`` (built on first use)."""
        unit = self.space.units[index]
        if key not in unit.allowed:
            raise ValueError(f"unit {unit.name!r} cannot take format {key!r}; {unit.allowed}")
        if self.root is None:
            t = self._memory.get((index, key))
            if t is None:
                t = self._memory[(index, key)] = self._build(index, key)
            return t
        path = self._path(index, key)
        if path.exists():
            cached = self._load(path, index)
            if cached is not None:
                return cached
        self._save(path, self._build(index, key))
        loaded = self._load(path, index)
        assert loaded is not None
        return loaded

    def _build(self, index: int, key: str) -> torch.Tensor:
        """The backend's ``W_hat`` of this unit (the model must hold its original weights)."""
        if self._source is None:
            self._source = self._quantized_from_originals()
        view = self._views[index]
        variant = self._source.get(index, key).weight.to(device=view.device, dtype=view.dtype)
        self.built += 1
        return variant

    def _quantized_from_originals(self) -> Any:
        """The backend's quantized source, built with every original weight in place (a
        broken cache file can ask for a build while variants are swapped in)."""
        import torch

        with torch.no_grad():
            current = [v.detach().clone() for v in self._views]
            for view, original in zip(self._views, self.originals):
                view.copy_(original)
            try:
                return self.backend.quantized(self.model, self.space, self.calib)
            finally:
                for view, now in zip(self._views, current):
                    view.copy_(now)

    def _path(self, index: int, key: str) -> Path:
        assert self.root is not None
        return self.root / _safe(self.space.units[index].name) / f"{_safe(key)}.safetensors"

    @staticmethod
    def _save(path: Path, tensor: torch.Tensor) -> None:
        from safetensors.torch import save_file

        from ..search._io import atomic_write

        cpu = tensor.detach().to("cpu").contiguous()
        atomic_write(path, lambda p: save_file({"weight": cpu}, str(p)))

    def _load(self, path: Path, index: int) -> torch.Tensor | None:
        """The cached variant, or ``None`` when the file is broken (truncated, not
        safetensors) or does not match the unit: the caller rebuilds and replaces it."""
        from safetensors.torch import load_file

        ref = self.originals[index]
        try:
            t = load_file(str(path))["weight"]
        except Exception as e:  # safetensors raises its own SafetensorError, or KeyError
            log.warning("variant cache file %s is broken (%s); rebuilding it", path, e)
            return None
        if tuple(t.shape) != tuple(ref.shape) or t.dtype != ref.dtype:
            log.warning("variant cache file %s does not match the unit; rebuilding it", path)
            return None
        return t.to(ref.device)


def _safe(name: str) -> str:
    """A file-name-safe form of ``name`` (kept unique: a short hash is added when changed)."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if clean == name:
        return name
    return f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
