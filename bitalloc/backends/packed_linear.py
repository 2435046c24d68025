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

The dequantized weight equals the rtn backend's fake-quantized weight bit for bit.
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


def pack_block(w: torch.Tensor, fmt: QuantFormat, act_norms: Any = None) -> dict[str, Any]:
    """Pack one 2-D weight block ``w`` in ``fmt`` (sparse: prune by magnitude, or Wanda when
    ``act_norms`` is given, then quantize the kept weights) -> buffer tensors."""
    from ..kernels.pack import pack_bits, pack_weight, unpack_bits
    from ..kernels.sparsity import prune_mask

    w = w.detach()
    out: dict[str, torch.Tensor] = {}
    keep = None
    if fmt.is_sparse:
        keep = prune_mask(w, fmt.sparsity, fmt.n_m, act_norms=act_norms).reshape(-1)
        out["mask"] = pack_bits(keep.to(torch.uint8), 1)
        w = torch.where(keep.view(w.shape), w, torch.zeros((), dtype=w.dtype, device=w.device))
    if fmt.is_float:
        half = torch.bfloat16 if fmt.float_kind == "bf16" else torch.float16
        v = w.to(half)
        if keep is None:
            out["weight"] = v.contiguous()
        else:
            out["values"] = v.reshape(-1)[keep].contiguous()
        return out
    pw = pack_weight(w.float(), fmt.bits, fmt.group_size, fmt.symmetric)
    codes = pw.codes
    if keep is not None:
        codes = pack_bits(unpack_bits(codes, fmt.bits, w.numel())[keep], fmt.bits)
    out.update(codes=codes, scales=pw.scales)
    if pw.zeros is not None:
        out["zeros"] = pw.zeros
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
    def from_linear(
        cls, linear: nn.Linear, blocks: Sequence[Block], act_norms: Any = None
    ) -> PackedLinear:
        """Pack ``linear.weight`` block by block (``act_norms``: Wanda input norms)."""
        tensors: dict[str, torch.Tensor] = {}
        for k, (start, stop, key) in enumerate(blocks):
            packed = pack_block(linear.weight[start:stop], QuantFormat.parse(key), act_norms)
            tensors.update({f"b{k}_{n}": t for n, t in packed.items()})
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
