"""``PackedLinear``: an ``nn.Linear`` whose weight lives in the packed storage layout.

A layer is stored as row blocks (one per plan unit: the whole weight, or a channel slice
``[start, stop)`` of output rows), each in its own format. Buffers of block ``k`` (all counted
by :meth:`QuantFormat.nbytes`, nothing else is stored for the weight):

- integer, dense: ``b{k}_codes`` uint8 ``ceil(numel*b/8)``, ``b{k}_scales`` fp16 ``[rows, G]``,
  ``b{k}_zeros`` uint8 ``ceil(rows*G*b/8)`` (asymmetric only) - the
  :mod:`bitalloc.kernels.pack` layout; forward by :func:`bitalloc.kernels.matmul.dequant_matmul`
  (Triton on CUDA, pure torch elsewhere).
- integer, sparse: as dense, but ``b{k}_codes`` holds only the kept weights' codes in
  row-major order (``ceil(kept*b/8)``), plus ``b{k}_mask`` the 1-bit keep-mask
  (``pack_bits(mask, 1)``, ``ceil(numel/8)``); forward unpacks to a dense weight.
- 16-bit float: ``b{k}_weight`` bf16/fp16 ``[rows, cols]``; sparse: ``b{k}_values`` (kept
  weights, row-major) + ``b{k}_mask``.

The dequantized weight equals the fake-quantized weight of the backend whose kept codes were
packed (rtn or gptq, :meth:`PackedLinear.from_quantized`) bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..search.formats import QuantFormat

if TYPE_CHECKING:
    from ..kernels.pack import PackedWeight

Block = tuple[int, int, str]  # (start row, stop row, format key)


def tensor_specs(fmt: QuantFormat, shape: tuple[int, int]) -> dict[str, tuple[tuple, Any]]:
    """Buffer name (without the ``b{k}_`` prefix) -> (shape, dtype) for a block in ``fmt``."""
    rows, cols = shape
    numel, kept = rows * cols, fmt.n_kept(shape)
    specs: dict[str, tuple[tuple, Any]] = {}
    if fmt.is_float:
        half = torch.bfloat16 if fmt.float_kind == "bf16" else torch.float16
        specs = {"values": ((kept,), half)} if fmt.is_sparse else {"weight": (shape, half)}
    else:
        groups = fmt.n_groups(shape) // rows
        specs["codes"] = ((math.ceil(kept * fmt.bits / 8),), torch.uint8)
        specs["scales"] = ((rows, groups), torch.float16)
        if not fmt.symmetric:
            specs["zeros"] = ((math.ceil(rows * groups * fmt.bits / 8),), torch.uint8)
    if fmt.is_sparse:
        specs["mask"] = ((math.ceil(numel / 8),), torch.uint8)
    return specs


def _block_buffers(
    w: torch.Tensor,
    fmt: QuantFormat,
    codes: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Buffers of a block quantized elsewhere (RTN above, or GPTQ/SparseGPT's kept codes).

    Args:
        w: the block's weight ``[rows, cols]`` (read only for 16-bit float formats).
        fmt: its format.
        codes, scale, zero: integer formats: the :func:`bitalloc.kernels.reference.quantize`
            form (``codes`` int ``[rows, G, group]``, signed when symmetric; ``scale`` fp16
            ``[rows, G]``; ``zero`` int ``[rows, G]`` or ``None``), stored as they are in the
            :mod:`bitalloc.kernels.pack` layout (symmetric codes offset by ``2^(b-1)``).
        keep: sparse formats: the boolean keep-mask ``[rows, cols]`` (exactly
            ``fmt.n_kept`` entries); only the kept weights' codes/values are stored.
    """
    from ..kernels.pack import pack_bits

    out: dict[str, torch.Tensor] = {}
    shape = (int(w.shape[0]), int(w.shape[1]))
    if fmt.is_sparse:
        if keep is None or tuple(keep.shape) != shape or int(keep.sum()) != fmt.n_kept(shape):
            raise ValueError(
                f"`keep` must be a bool mask of shape {shape} with {fmt.n_kept(shape)} kept "
                f"entries for {fmt.key}"
            )
        keep = keep.reshape(-1).bool()
        out["mask"] = pack_bits(keep.to(torch.uint8), 1)
    if fmt.is_float:
        v = w.detach().to(torch.bfloat16 if fmt.float_kind == "bf16" else torch.float16)
        if keep is None:
            out["weight"] = v.contiguous()
        else:
            out["values"] = v.reshape(-1)[keep].contiguous()
        return out
    if codes is None or scale is None or (zero is None) != fmt.symmetric:
        raise ValueError(
            f"{fmt.key} needs `codes` and `scale`" + ("" if fmt.symmetric else " and `zero`")
        )
    flat = codes.reshape(-1).to(torch.int16)
    if fmt.symmetric:
        flat = flat + 2 ** (fmt.bits - 1)
    out["codes"] = pack_bits(flat if keep is None else flat[keep], fmt.bits)
    out["scales"] = scale.to(torch.float16).contiguous()
    if zero is not None:
        out["zeros"] = pack_bits(zero, fmt.bits)
    return out


class PackedLinear(nn.Module):
    """A linear layer computing ``x @ W^T + b`` from packed row blocks (see the module doc).

    Args:
        in_features, out_features: the layer's dimensions.
        blocks: ``(start, stop, format key)`` row blocks covering ``0..out_features`` in order.
        tensors: ``"b{k}_<name>"`` -> tensor for every block (see :func:`tensor_specs`);
            shapes and dtypes are checked exactly.
        bias: the original bias (kept as is) or ``None``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        blocks: Sequence[Block],
        tensors: Mapping[str, torch.Tensor],
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.blocks = tuple((int(a), int(b), QuantFormat.parse(k).key) for a, b, k in blocks)
        rows = [b - a for a, b, _ in self.blocks]
        if [a for a, _, _ in self.blocks] != [0, *[b for _, b, _ in self.blocks[:-1]]] or (
            sum(rows) != self.out_features or min(rows, default=0) < 1
        ):
            raise ValueError(
                f"`blocks` must cover rows 0..{self.out_features} in order, got {self.blocks}"
            )
        expected = self.expected_tensors()
        problems = [f"missing {n}" for n in expected if n not in tensors]
        problems += [f"unexpected {n}" for n in tensors if n not in expected]
        for name, (shape, dtype) in expected.items():
            t = tensors.get(name)
            if t is not None and (tuple(t.shape) != shape or t.dtype != dtype):
                problems.append(f"{name}: {tuple(t.shape)} {t.dtype} != {shape} {dtype}")
            if t is not None:
                self.register_buffer(name, t.contiguous())
        if problems:
            raise ValueError("packed tensors do not match the layer: " + "; ".join(problems))
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias)

    @classmethod
    def from_quantized(
        cls, linear: nn.Linear, blocks: Sequence[Block], results: Sequence[Any]
    ) -> PackedLinear:
        """Pack precomputed codes block by block, e.g. GPTQ's (no re-quantization).

        ``results[k]`` belongs to ``blocks[k]``: an object with ``codes``, ``scale``, ``zero``
        and ``keep`` attributes (:class:`bitalloc.backends.quantizer.Quantized`), or ``None`` for a
        dense 16-bit float block. ``linear.weight`` must already hold the quantized weights
        (16-bit float blocks are stored from it).
        """
        if len(results) != len(blocks):
            raise ValueError(f"`results` has {len(results)} entries for {len(blocks)} blocks")
        tensors: dict[str, torch.Tensor] = {}
        for k, ((start, stop, key), res) in enumerate(zip(blocks, results)):
            fmt, w = QuantFormat.parse(key), linear.weight[start:stop]
            if res is None and not (fmt.is_float and not fmt.is_sparse):
                raise ValueError(f"block {k} ({key}) needs its codes/scales (got None)")
            parts = (None,) * 4 if res is None else (res.codes, res.scale, res.zero, res.keep)
            tensors.update({f"b{k}_{n}": t for n, t in _block_buffers(w, fmt, *parts).items()})
        return cls(linear.in_features, linear.out_features, blocks, tensors, linear.bias)

    def expected_tensors(self) -> dict[str, tuple[tuple, Any]]:
        """Every buffer's name -> (shape, dtype) for this layer's blocks."""
        out = {}
        for k, (start, stop, key) in enumerate(self.blocks):
            specs = tensor_specs(QuantFormat.parse(key), (stop - start, self.in_features))
            out.update({f"b{k}_{n}": s for n, s in specs.items()})
        return out

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        """The stored weight tensors (buffers), by name."""
        return {n: getattr(self, n) for n in self.expected_tensors()}

    @property
    def nbytes(self) -> int:
        """Bytes of the stored weight tensors (equals the plan's predicted bytes)."""
        return sum(t.numel() * t.element_size() for t in self.packed_tensors().values())

    # ------------------------------------------------------------------ compute
    def _packed(self, k: int, fmt: QuantFormat, rows: int) -> PackedWeight:
        """The dense integer block ``k`` as a :class:`PackedWeight` (shares the buffers)."""
        from ..kernels.pack import PackedWeight

        codes = getattr(self, f"b{k}_codes")
        zeros = getattr(self, f"b{k}_zeros", None)
        scales = getattr(self, f"b{k}_scales")
        shape = (rows, self.in_features)
        return PackedWeight(codes, scales, zeros, fmt.bits, fmt.group_size, shape)

    def _mask(self, k: int, rows: int) -> torch.Tensor:
        from ..kernels.pack import unpack_bits

        return unpack_bits(getattr(self, f"b{k}_mask"), 1, rows * self.in_features).bool()

    def block_weight(self, k: int) -> torch.Tensor:
        """Dense fp32 weight ``[rows, in]`` of block ``k`` (pruned entries exactly 0)."""
        from ..kernels.pack import unpack_weight

        start, stop, key = self.blocks[k]
        fmt, rows = QuantFormat.parse(key), stop - start
        if fmt.is_float and not fmt.is_sparse:
            return getattr(self, f"b{k}_weight").float()
        if fmt.is_float:
            keep = self._mask(k, rows)
            values = getattr(self, f"b{k}_values")
            w = torch.zeros(keep.numel(), dtype=torch.float32, device=values.device)
            w[keep] = values.float()
            return w.view(rows, self.in_features)
        if not fmt.is_sparse:
            return unpack_weight(self._packed(k, fmt, rows)).reshape(rows, self.in_features)
        return self._sparse_weight(k, fmt, rows)

    def _sparse_weight(self, k: int, fmt: QuantFormat, rows: int) -> torch.Tensor:
        """Scatter the kept codes to their positions and dequantize (pack.py code layout:
        symmetric codes are offset by ``2^(b-1)``); pruned entries are exactly 0."""
        from ..kernels.pack import unpack_bits
        from ..kernels.reference import dequantize

        keep = self._mask(k, rows)
        codes = getattr(self, f"b{k}_codes")
        q = torch.zeros(keep.numel(), dtype=torch.int16, device=codes.device)
        q[keep] = unpack_bits(codes, fmt.bits, int(keep.sum())).to(torch.int16)
        scales = getattr(self, f"b{k}_scales")
        q = q.view(rows, scales.shape[1], -1)
        zeros = getattr(self, f"b{k}_zeros", None)
        if zeros is None:
            q = q - 2 ** (fmt.bits - 1)
        else:
            zeros = unpack_bits(zeros, fmt.bits, scales.numel()).to(torch.int16)
            zeros = zeros.view(scales.shape)
        w = dequantize(q, scales, zeros, (rows, self.in_features))
        return torch.where(keep.view(w.shape), w, torch.zeros((), device=w.device))

    def dequantized_weight(self) -> torch.Tensor:
        """The whole dense fp32 weight ``[out, in]``."""
        return torch.cat([self.block_weight(k) for k in range(len(self.blocks))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels.matmul import dequant_matmul

        outs = []
        for k, (start, stop, key) in enumerate(self.blocks):
            fmt = QuantFormat.parse(key)
            if fmt.is_float or fmt.is_sparse:
                w = self.block_weight(k)
                y = (x.float() @ w.T.to(x.device)).to(x.dtype)
            else:
                y = dequant_matmul(x, self._packed(k, fmt, stop - start))
            outs.append(y)
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        fmts = ", ".join(f"[{a}:{b}] {k}" for a, b, k in self.blocks)
        return f"in_features={self.in_features}, out_features={self.out_features}, {fmts}"
