#!/usr/bin/env python3
"""One token through a matrix of each GGUF block type against a llama2.c Q8_0 matrix of
the same shape, in one run: the decode matmul (Kernels.matmul, the engine's driver and
kernel), 1 and 2 threads, GB/s of weight bytes streamed and the speed relative to
Q8_0 (its time / this time: 1.8x is 1.8 times as fast).

    python tools/bench_blocks.py                       # 4096x11008 and 11008x4096
    python tools/bench_blocks.py --variant avx2 --types q4_k,q6_k --reps 30

Weights are random bytes with sane fp16 scales (the kernels' speed does not depend on
the values). Each measurement cycles through copies of the matrix whose total exceeds
--cache-mb, so the bytes come from DRAM as in a forward pass, not from L3. Timings are
medians over --reps; the spread (max / min of the reps) is printed too, for a shared
machine.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qllama import kernels  # noqa: E402
from qllama._kernels.engine import Kernels  # noqa: E402
from qllama.formats.llama2c import QTensor  # noqa: E402
from qllama.quant.types import TYPES, BlockTensor  # noqa: E402

SCALES = {"q8_0": [0], "q4_0": [0], "q4_1": [0, 2], "q4_k": [0, 2], "q5_k": [0, 2],
          "q6_k": [208]}


def block_tensor(name, rows, cols, rng):
    qt = TYPES[name]
    if name in ("f16", "bf16"):
        h = rng.normal(size=rows * cols).astype(np.float32)
        data = (h.astype(np.float16).view(np.uint16) if name == "f16"
                else (h.view(np.uint32) >> 16).astype(np.uint16)).view(np.uint8)
        return BlockTensor(qt, (rows, cols), data)
    data = rng.integers(0, 256, rows * qt.row_bytes(cols), dtype=np.uint8)
    blocks = data.reshape(-1, qt.nbytes)
    for at in SCALES[name]:
        blocks[:, at:at + 2] = np.array([0.01], np.float16).view(np.uint8)
    return BlockTensor(qt, (rows, cols), data)


def q80_tensor(rows, cols, gs, rng):
    q = rng.integers(-127, 128, rows * cols, dtype=np.int8)
    return QTensor(q, np.full(rows * cols // gs, 0.01, np.float32), (rows, cols), gs)


def make_tensor(name, rows, cols, gs, rng):
    if name == "llama2c-q8_0":
        return q80_tensor(rows, cols, gs, rng)
    return block_tensor(name, rows, cols, rng)


def nbytes(t) -> int:
    return t.data.size if isinstance(t, BlockTensor) else t.q.size + 4 * t.s.size


def time_one(k, copies, x, threads, reps):
    k.matmul(copies[0], x, threads)  # warm: page faults, threads
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        k.matmul(copies[i % len(copies)], x, threads)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times) / min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default=kernels.select())
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--shapes", default="4096x11008,11008x4096", help="rows x cols, ...")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=1, help="a block of tokens (prefill)")
    ap.add_argument("--gs", type=int, default=64, help="the llama2.c Q8_0 group size")
    ap.add_argument("--cache-mb", type=int, default=96, help="copies to exceed this")
    args = ap.parse_args(argv)
    k = Kernels(args.variant)
    rng = np.random.default_rng(0)
    print(f"variant {args.variant} on {platform.processor() or platform.machine()}; "
          f"{args.tokens} token(s) a matmul, median of {args.reps}")
    print(f"{'shape':>11} {'type':>6} {'thr':>3} {'ms':>8} {'GB/s':>6} {'vs Q8_0':>8} {'spread':>6}"
          "  (GB/s: weight bytes / time)")
    for shape in args.shapes.split(","):
        rows, cols = map(int, shape.split("x"))
        x = rng.normal(size=(args.tokens, cols)).astype(np.float32)
        base = {}
        for name in ["llama2c-q8_0", *args.types.split(",")]:
            first = make_tensor(name, rows, cols, args.gs, rng)
            n_copies = max(1, -(-args.cache_mb * 2 ** 20 // nbytes(first)))
            copies = [first] + [make_tensor(name, rows, cols, args.gs, rng)
                                for _ in range(n_copies - 1)]
            for threads in map(int, args.threads.split(",")):
                t, spread = time_one(k, copies, x, threads, args.reps)
                if name == "llama2c-q8_0":
                    base[threads] = t
                print(f"{shape:>11} {name[-6:]:>6} {threads:>3} {t * 1e3:8.3f} "
                      f"{nbytes(first) / t / 1e9:6.1f} {base[threads] / t:7.2f}x {spread:6.2f}")
            del copies
    return 0


if __name__ == "__main__":
    sys.exit(main())
