"""Dequant-matmul kernels: Triton (packed weights) vs a dense fp16 matmul, and the CPU paths.

On a CUDA GPU (``--device cuda``, the default when one is present) for every weight shape
``N x K`` (out x in features; default 4096x4096, 11008x4096, 4096x11008), batch ``M`` (1, 16,
64) and bit width (2, 3, 4, 8; group 128, asymmetric): the Triton kernel picked by
``dequant_matmul`` (GEMV for ``M <= 4``, autotuned GEMM otherwise) against ``x @ W16.T`` with a
dense fp16 weight. Prints us/call (``triton.testing.do_bench``, median), TFLOP/s
(``2*M*N*K / t``), achieved bandwidth (bytes of packed weight + scales + zeros + activations +
output, over ``t``; the fp16 row counts the dense 2-byte weight) and the SQNR of the kernel
against the pure-torch reference.

On CPU: the reference path (unpack + fp32 matmul) at ``--cpu-shape`` against the dense fp32
matmul, pack/unpack times, and with ``--interp-grid`` the Triton interpreter correctness grid
(``TRITON_INTERPRET=1``: bits x groups x sym/asym x fp32/fp16/bf16 x M x GEMV/GEMM on tiny
shapes), reporting the worst SQNR per activation dtype and the time per interpreted call.
GPU numbers need a GPU.

    python benchmarks/kernels.py [--device auto|cuda|cpu] [--bits 2 3 4 8] [--batches 1 16 64]
                                 [--cpu-shape 2048 2048] [--interp-grid]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from bitalloc.kernels.matmul import dequant_matmul, dequant_matmul_reference
from bitalloc.kernels.pack import pack_bits, pack_weight, unpack_bits, unpack_weight

GPU_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    ref, approx = ref.double(), approx.double()
    err = (ref - approx).pow(2).sum()
    return float("inf") if err == 0 else float(10 * torch.log10(ref.pow(2).sum() / err))


def cpu_time_us(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``fn`` in microseconds over ``reps`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def row(cells: list[object], widths: list[int]) -> str:
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))


def bench_gpu(bits: list[int], batches: list[int], group: int) -> None:
    from triton.testing import do_bench

    widths = [12, 4, 10, 10, 9, 9, 9]
    print(row(["N x K", "M", "kernel", "us/call", "TFLOP/s", "GB/s", "SQNR dB"], widths))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n, k in GPU_SHAPES:
        w = torch.randn(n, k, device="cuda", generator=gen) * 0.02
        w16 = w.half()
        packed = {b: pack_weight(w, b, group) for b in bits}
        for m in batches:
            x = torch.randn(m, k, device="cuda", generator=gen).half()
            act = 2 * m * (k + n)
            flop = 2 * m * n * k
            us = 1e3 * do_bench(lambda x=x, w16=w16: x @ w16.T)
            cells = [f"{n}x{k}", m, "fp16", f"{us:.1f}", f"{flop / us / 1e6:.2f}"]
            print(row([*cells, f"{(2 * n * k + act) / us / 1e3:.0f}", "-"], widths))
            for b, pw in packed.items():
                y = dequant_matmul(x, pw)
                db = sqnr_db(dequant_matmul_reference(x, pw), y)
                us = 1e3 * do_bench(lambda x=x, pw=pw: dequant_matmul(x, pw))
                gbs = (pw.nbytes + act) / us / 1e3
                cells = [f"{n}x{k}", m, f"int{b}-g{group}", f"{us:.1f}", f"{flop / us / 1e6:.2f}"]
                print(row([*cells, f"{gbs:.0f}", f"{db:.1f}"], widths))
        del w, w16, packed
        torch.cuda.empty_cache()


def bench_cpu(bits: list[int], batches: list[int], group: int, shape: tuple[int, int]) -> None:
    n, k = shape
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=gen) * 0.02
    print(f"CPU reference path, weight {n}x{k}, group {group}, {torch.get_num_threads()} threads")
    widths = [4, 12, 10, 10, 12, 12]
    print(row(["M", "format", "us/call", "GFLOP/s", "pack us", "unpack us"], widths))
    for m in batches:
        x = torch.randn(m, k, generator=gen)
        flop = 2 * m * n * k
        us = cpu_time_us(lambda x=x: x @ w.T, 5)
        print(row([m, "fp32 dense", f"{us:.0f}", f"{flop / us / 1e3:.1f}", "-", "-"], widths))
        for b in bits:
            pw = pack_weight(w, b, group)
            us = cpu_time_us(lambda x=x, pw=pw: dequant_matmul_reference(x, pw), 5)
            t_pack = cpu_time_us(lambda b=b: pack_weight(w, b, group), 3)
            t_unpack = cpu_time_us(lambda pw=pw: unpack_weight(pw), 3)
            cells = [m, f"int{b}-g{group}", f"{us:.0f}", f"{flop / us / 1e3:.1f}"]
            print(row([*cells, f"{t_pack:.0f}", f"{t_unpack:.0f}"], widths))
    codes = torch.randint(0, 8, (n * k,), generator=gen, dtype=torch.uint8)
    t = cpu_time_us(lambda: unpack_bits(pack_bits(codes, 3), 3, codes.numel()), 3)
    print(f"3-bit pack+unpack round trip of {n * k:,} codes: {t / 1e3:.1f} ms")


def interp_grid() -> None:
    """Triton interpreter vs the reference over the test grid; worst SQNR and call times."""
    os.environ["TRITON_INTERPRET"] = "1"
    from bitalloc.kernels.triton_dequant import triton_dequant_matmul

    worst: dict[str, float] = {}
    times: list[float] = []
    gen = torch.Generator().manual_seed(0)
    for n, k in ((16, 64), (24, 128), (20, 40)):
        for b in (2, 3, 4, 8):
            for group in (32, 64, None):
                if group is not None and k % group:
                    continue
                for sym in (False, True):
                    pw = pack_weight(torch.randn(n, k, generator=gen), b, group, sym)
                    for dt in (torch.float32, torch.float16, torch.bfloat16):
                        for m in (1, 5):
                            x = torch.randn(m, k, generator=gen).to(dt)
                            ref = dequant_matmul_reference(x, pw)
                            for kern in ("gemv", "gemm"):
                                t0 = time.perf_counter()
                                y = triton_dequant_matmul(x, pw, kernel=kern)
                                times.append(time.perf_counter() - t0)
                                name = str(dt).removeprefix("torch.")
                                worst[name] = min(worst.get(name, float("inf")), sqnr_db(ref, y))
    print(
        f"interpreter grid: {len(times)} launches, per call median "
        f"{1e3 * statistics.median(times):.0f} ms, max {1e3 * max(times):.0f} ms"
    )
    for name, db in worst.items():
        print(f"  worst SQNR vs reference, {name} activations: {db:.1f} dB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--cpu-shape", type=int, nargs=2, default=[2048, 2048])
    ap.add_argument("--interp-grid", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = ("cuda" if cuda else "cpu") if args.device == "auto" else args.device
    if device == "cuda":
        if not cuda:
            raise SystemExit("--device cuda: no CUDA device here")
        print(f"GPU: {torch.cuda.get_device_name()}")
        bench_gpu(args.bits, args.batches, args.group)
    else:
        bench_cpu(args.bits, args.batches, args.group, tuple(args.cpu_shape))
        print("GPU figures (Triton vs fp16 matmul) need a CUDA GPU: run with --device cuda there.")
    if args.interp_grid:
        interp_grid()


if __name__ == "__main__":
    main()
