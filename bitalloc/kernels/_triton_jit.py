"""Triton JIT kernels for ``y = x @ dequant(W)^T`` reading the packed bitstream directly.

Imported only by :mod:`bitalloc.kernels.triton_dequant` (lazily, because it imports triton at
module level). ``triton.jit`` decides at decoration time whether it builds an interpreted or a
compiled function, so the wrapper reloads this module when ``TRITON_INTERPRET`` changes.

Layout (see :mod:`bitalloc.kernels.pack`): code ``i = n*K + k`` sits at stream bit ``i*BITS``;
byte ``(i*BITS) >> 3``, shift ``(i*BITS) & 7``. Widths dividing 8 never straddle a byte; other
widths (3) read the next byte too and take ``((hi << 8 | lo) >> shift) & (2^BITS - 1)``. Zero
points use the same layout over the ``N x n_groups`` group index; symmetric formats use the
implicit zero point ``2^(BITS-1)``. ``w = (code - zero) * scale`` in fp32 (exact, as the
reference), accumulated in fp32.

The kernels call only builtins of ``triton.language`` (``tl.full``, ``tl.reduce``), never its
``@jit`` helpers (``tl.zeros``, ``tl.sum``): those are built when triton is first imported, so
if another library imported triton before ``TRITON_INTERPRET=1`` was set they are compiled-mode
functions that the interpreter cannot call. ``tl.reduce`` with ``tl.standard._sum_combine`` is
what ``tl.sum`` expands to (and the interpreter's fast numpy path).
"""

from __future__ import annotations

import triton
import triton.language as tl

INTERPRET: bool = bool(triton.knobs.runtime.interpret)


@triton.jit
def _codes_at(ptr, idx, nbytes, mask, BITS: tl.constexpr):
    """Unsigned BITS-wide codes at int64 flat indices ``idx`` of an LSB-first bitstream."""
    if BITS == 8:
        code = tl.load(ptr + idx, mask=mask, other=0).to(tl.int32)
    else:
        bit = idx * BITS
        byte = bit >> 3
        shift = (bit & 7).to(tl.int32)
        word = tl.load(ptr + byte, mask=mask, other=0).to(tl.int32)
        if 8 % BITS != 0:  # straddling widths: combine with the next byte
            hi = tl.load(ptr + byte + 1, mask=mask & (byte + 1 < nbytes), other=0)
            word = word | (hi.to(tl.int32) << 8)
        code = (word >> shift) & ((1 << BITS) - 1)
    return code


@triton.jit
def _dequant(
    codes_ptr,
    scales_ptr,
    zeros_ptr,
    offs_n,
    offs_k,
    n_mask,
    k_mask,
    k0,
    K,
    n_groups,
    codes_nbytes,
    zeros_nbytes,
    BITS: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    PER_CHANNEL: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """fp32 weight tile at broadcastable ``offs_n`` x ``offs_k`` (any 2-D orientation)."""
    mask = n_mask & k_mask
    n64 = offs_n.to(tl.int64)
    code = _codes_at(codes_ptr, n64 * K + offs_k, codes_nbytes, mask, BITS)
    if PER_CHANNEL:  # one group per row
        gidx = n64
        gmask = n_mask
    elif GROUP_SIZE % BLOCK_K == 0:  # the whole K tile lies in one group: one scale per row
        gidx = n64 * n_groups + k0 // GROUP_SIZE
        gmask = n_mask
    else:
        gidx = n64 * n_groups + offs_k // GROUP_SIZE
        gmask = mask
    scale = tl.load(scales_ptr + gidx, mask=gmask, other=0.0).to(tl.float32)
    if HAS_ZERO:
        zero = _codes_at(zeros_ptr, gidx, zeros_nbytes, gmask, BITS)
    else:
        zero = 1 << (BITS - 1)
    return (code - zero).to(tl.float32) * scale


@triton.jit
def gemv_kernel(
    x_ptr,
    codes_ptr,
    scales_ptr,
    zeros_ptr,
    y_ptr,
    M,
    N,
    K,
    n_groups,
    codes_nbytes,
    zeros_nbytes,
    BITS: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    PER_CHANNEL: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One program per (BLOCK_N output rows, activation row): ``y[m, n] = sum_k x[m,k] w[n,k]``."""
    pid_n = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.full([BLOCK_N], 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_ptr + m * K + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        w = _dequant(
            codes_ptr,
            scales_ptr,
            zeros_ptr,
            offs_n[:, None],
            offs_k[None, :],
            n_mask[:, None],
            k_mask[None, :],
            k0,
            K,
            n_groups,
            codes_nbytes,
            zeros_nbytes,
            BITS,
            GROUP_SIZE,
            PER_CHANNEL,
            HAS_ZERO,
            BLOCK_K,
        )
        acc += tl.reduce(w * x[None, :], 1, tl.standard._sum_combine)
    tl.store(y_ptr + m * N + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def gemm_kernel(
    x_ptr,
    codes_ptr,
    scales_ptr,
    zeros_ptr,
    y_ptr,
    M,
    N,
    K,
    n_groups,
    codes_nbytes,
    zeros_nbytes,
    BITS: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    PER_CHANNEL: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    FP32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Tiled ``[BLOCK_M, BLOCK_N]`` output per program; ``tl.dot`` of x tiles with W^T tiles."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    m64 = offs_m.to(tl.int64)
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        a = tl.load(
            x_ptr + m64[:, None] * K + offs_k[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        w = _dequant(
            codes_ptr,
            scales_ptr,
            zeros_ptr,
            offs_n[None, :],
            offs_k[:, None],
            n_mask[None, :],
            k_mask[:, None],
            k0,
            K,
            n_groups,
            codes_nbytes,
            zeros_nbytes,
            BITS,
            GROUP_SIZE,
            PER_CHANNEL,
            HAS_ZERO,
            BLOCK_K,
        )
        if FP32_DOT:  # fp32 (or upcast bf16) operands
            acc += tl.dot(a.to(tl.float32), w, input_precision="ieee")
        else:
            acc += tl.dot(a, w.to(a.dtype))
    out = y_ptr + m64[:, None] * N + offs_n[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _gemv_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w)
        for bn, bk, w in [
            (8, 256, 4),
            (16, 128, 4),
            (16, 256, 4),
            (32, 128, 4),
            (32, 256, 8),
            (64, 64, 4),
            (64, 128, 8),
        ]
    ]


def _gemm_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in [
            (16, 64, 64, 4, 3),
            (16, 128, 64, 4, 3),
            (16, 64, 128, 4, 4),
            (32, 64, 64, 4, 3),
            (32, 128, 64, 4, 3),
            (64, 64, 64, 4, 3),
            (64, 128, 64, 8, 3),
            (64, 128, 128, 8, 3),
            (64, 256, 64, 8, 3),
        ]
    ]


gemv_tuned = triton.autotune(configs=_gemv_configs(), key=["M", "N", "K"])(gemv_kernel)
gemm_tuned = triton.autotune(configs=_gemm_configs(), key=["M", "N", "K"])(gemm_kernel)
