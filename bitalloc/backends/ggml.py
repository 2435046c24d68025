"""The ggml backend: build each unit in a llama.cpp block type with ggml's own quantizer.

Formats are ggml types (``q2_k`` .. ``q6_k``, ``q4_0``/``q4_1``/``q5_0``/``q5_1``/``q8_0``,
``iq4_nl``, ``iq4_xs``; see :data:`bitalloc.search.formats.GGML_TYPES`) and the 16-bit floats.
``W_hat`` is ``ggml_quantize_chunk`` followed by the type's ``to_float``, called in the built
``libggml-base`` (:mod:`bitalloc.toolkits.ggml`), so it is bit for bit the weight
``llama-quantize`` writes for that tensor from an F32 GGUF of the model, and the table, the
EvoPress variants and ``apply`` price exactly what the GGUF file will hold.

Importance matrix (``imatrix``): ``"auto"`` (default) uses ``E[x^2]`` of each layer's input
over ``calib`` when calibration is given (what ``llama-imatrix`` collects, written for
``llama-quantize --imatrix`` by :func:`bitalloc.backends.export.llamacpp.write_imatrix`),
``"on"`` requires it, ``"off"`` quantizes data-free like ``llama-quantize`` without one.
Needs ``make llama-cpp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..search.choices import Choice, set_choice
from ..search.formats import QuantFormat
from ..search.solution import Solution
from ..search.space import SearchSpace, Unit
from . import BACKENDS
from .base import AppliedPlan, UnitViews, check_plan, refuse_unsupported, write_weights
from .quantizer import Quantized, quantize_unit

if TYPE_CHECKING:
    import torch
    from torch import nn


class Imatrix(Choice):
    """Whether the ggml backend weights rounding by an importance matrix."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


@BACKENDS.register("ggml")
@dataclass(frozen=True, slots=True)
class GgmlBackend:
    """llama.cpp's quantizers, in place and reversibly.

    Args:
        imatrix: ``"auto"`` (with ``calib``: importance ``E[x^2]``; without: none), ``"on"``
            (needs ``calib``) or ``"off"``.
        keep_codes: keep every unit's ``W_hat`` on the handle (``handle.tensors``).
    """

    name: ClassVar[str]
    imatrix: Imatrix | str = Imatrix.AUTO
    keep_codes: bool = False

    def __post_init__(self) -> None:
        set_choice(self, "imatrix", Imatrix)
        if not isinstance(self.keep_codes, bool):
            raise TypeError(f"`keep_codes` must be a bool, got {self.keep_codes!r}")

    def supports(self, unit: Unit, fmt: QuantFormat) -> bool:
        """2-D weights in a ggml type whose block divides the row, or a 16-bit float."""
        ok = (fmt.is_ggml or fmt.is_float) and not fmt.is_sparse
        return ok and len(unit.shape) == 2 and fmt.supports(unit.shape)

    def uses_imatrix(self, calib: Any) -> bool:
        if self.imatrix is Imatrix.ON and calib is None:
            raise ValueError(
                "`calib` is required by the ggml backend with imatrix='on' (the importance "
                "matrix is E[x^2] of each layer's input); pass calib=... or imatrix='off'"
            )
        return self.imatrix is Imatrix.ON or (self.imatrix is Imatrix.AUTO and calib is not None)

    def quantized(self, model: nn.Module, space: SearchSpace, calib: Any = None) -> GgmlWeights:
        return GgmlWeights(self, model, space, calib)

    def apply(self, model: nn.Module, solution: Solution, *, calib: Any = None) -> AppliedPlan:
        modules = check_plan(model, solution)
        refuse_unsupported(
            self,
            solution,
            "ggml types (q4_k, q8_0, ...) and 16-bit floats on 2-D weights whose rows fit the "
            "type's block",
        )
        source = self.quantized(model, solution.space, calib)
        return write_weights(model, solution, modules, source, keep_codes=self.keep_codes)


class GgmlWeights(UnitViews):
    """The ggml backend's ``W_hat`` for a search space (importance collected once)."""

    def __init__(self, backend: GgmlBackend, model: nn.Module, space: SearchSpace, calib: Any):
        super().__init__(model, space)
        self.backend = backend
        self.importance: dict[str, torch.Tensor] = {}
        if backend.uses_imatrix(calib):
            from ..nn import input_moments
            from ..search.calibration import as_calibration

            # an embedding table is read by index: no input, no importance (as llama-imatrix)
            fqns = sorted({u.fqn for u in space.units if not u.embedding})
            moments = input_moments(model, fqns, as_calibration(calib))
            self.importance = {f: m.mean_square for f, m in moments.items()}

    def get(self, index: int, key: str) -> Quantized:
        import torch

        unit, fmt, w = self.take(index, key)
        if fmt.is_float:
            return quantize_unit(w, fmt)  # the one 16-bit cast
        from ..toolkits import ggml

        imp = self.importance.get(unit.fqn)
        w_hat = ggml.roundtrip(
            w.numpy(), str(fmt.ggml), None if imp is None else imp.double().cpu().numpy()
        )
        return Quantized(torch.from_numpy(w_hat), None, None, None, None)
