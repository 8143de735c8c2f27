#!/usr/bin/env python3
"""Check qllama's GGUF quantization against llama.cpp's own (not a CI test: CI has
no llama.cpp).

    python tools/check_quants.py MODEL.bin [-z tokenizer.model] [--types q4_k_m q6_k]
        [--llama-cpp /work/refs/llama.cpp/build/bin] [--random N] [--speed]
        [--calibrate TEXT]

For each --type: `qllama export --to gguf --type f32` writes the fp32 model as GGUF,
llama-quantize quantizes that to the type, `qllama quantize --type` quantizes the
llama2.c file directly; then every tensor of the two files is compared: same type,
and the fraction of equal blocks. With --calibrate TEXT, both quantize with qllama's
importance matrix of the model over TEXT (handed to llama-quantize --imatrix in
its file format). With --random N, also N random rows per block
type (normal, tiny, all-zero, mixed-zero, positive, integer-valued blocks)
quantized by libggml-base's ggml_quantize_chunk in process and by
qllama._kernels.quantize_blocks, block by block. With --speed, MB/s of float32 in
on one thread for each block type, ours and libggml-base's, on a stories110M-size
tensor (32000 x 768, gaussian).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import struct
import subprocess
import sys
import tempfile
import time

import gguf
import numpy as np

from qllama.quant.blocks import WEIGHTED
from qllama.quant.types import TYPES

FTYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M",
          "q6_k": "Q6_K"}


def qllama(*args) -> None:
    subprocess.run([sys.executable, "-m", "qllama", *args, "-q", "--force"], check=True)


def compare_files(ours: str, theirs: str) -> tuple[int, int, int, dict]:
    """(tensors of equal type, equal blocks, blocks compared, {(our type, llama.cpp's):
    names} where the types differ)."""
    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    assert a.keys() == b.keys(), (a.keys() ^ b.keys())
    same_type, equal, blocks, mismatched = 0, 0, 0, {}
    for name, ta in a.items():
        tb = b[name]
        if ta.tensor_type != tb.tensor_type:
            key = (ta.tensor_type.name, tb.tensor_type.name)
            mismatched.setdefault(key, []).append(name)
            continue
        same_type += 1
        size = gguf.GGML_QUANT_SIZES[ta.tensor_type][1]
        da = np.asarray(ta.data).view(np.uint8).reshape(-1, size)
        db = np.asarray(tb.data).view(np.uint8).reshape(-1, size)
        equal += int((da == db).all(axis=1).sum())
        blocks += len(da)
    return same_type, equal, blocks, mismatched


def write_imatrix(path: str, importance: dict) -> None:
    """llama.cpp's imatrix file (the format llama-quantize --imatrix loads): entries of
    name, calls (0: values are means already), values; then the last call and the
    dataset's name."""
    from qllama.formats import gguf as gguf_format
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(importance)))
        for (name, layer), values in importance.items():
            key = gguf_format.tensor_name(name, layer).encode()
            f.write(struct.pack("<i", len(key)) + key + struct.pack("<ii", 0, len(values)))
            f.write(np.asarray(values, np.float32).tobytes())
        f.write(struct.pack("<ii", 0, 0))


def check_model(model: str, tokenizer: str | None, kinds: list, bin_dir: str,
                calibrate: str | None) -> None:
    z = ["-z", tokenizer] if tokenizer else []
    with tempfile.TemporaryDirectory(prefix="check-quants-") as tmp:
        f32 = os.path.join(tmp, "f32.gguf")
        qllama("export", model, f32, "--to", "gguf", "--type", "f32", *z)
        imatrix, cal = [], []
        if calibrate:
            from qllama.conversion.sources import resolve_tokenizer
            from qllama.quant.imatrix import importance
            from qllama.tokenizer import load_tokenizer
            tok = load_tokenizer(resolve_tokenizer(model, tokenizer))
            with open(calibrate, encoding="utf-8", errors="replace") as f:
                imp, n = importance(model, f.read(), tok)
            print(f"importance matrix from {n:,} tokens of {calibrate}")
            write_imatrix(os.path.join(tmp, "imatrix.dat"), imp)
            imatrix = ["--imatrix", os.path.join(tmp, "imatrix.dat")]
            cal = ["--calibrate", calibrate]
        for kind in kinds:
            theirs, ours = os.path.join(tmp, f"lc.{kind}.gguf"), os.path.join(tmp, f"q.{kind}.gguf")
            subprocess.run([os.path.join(bin_dir, "llama-quantize"), *imatrix, f32, theirs,
                            FTYPES[kind]], check=True, capture_output=True)
            qllama("quantize", model, ours, "--type", kind, *z, *cal)
            same, equal, blocks, mismatched = compare_files(ours, theirs)
            print(f"{kind}: {same} tensors of the same type, {equal:,} of {blocks:,} blocks "
                  f"equal ({equal / max(blocks, 1):.4%}); files {os.path.getsize(ours):,} and "
                  f"{os.path.getsize(theirs):,} bytes")
            for (a, b), names in mismatched.items():
                print(f"  {len(names)} tensors are {a} where llama.cpp's are {b}: "
                      f"{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}")


def ggml(bin_dir: str):
    """libggml-base with ggml_quantize_chunk's argument types, initialized."""

    class Params(ctypes.Structure):
        _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                    ("no_alloc", ctypes.c_bool)]

    lib = ctypes.CDLL(os.path.join(bin_dir, "libggml-base.so"))
    lib.ggml_init.restype = ctypes.c_void_p
    lib.ggml_init.argtypes = [Params]
    lib.ggml_init(Params(1 << 20, None, True))  # fills the fp16 table the k-quants read back
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    return lib


def check_random(n: int, bin_dir: str) -> None:
    from qllama._kernels.quantize_blocks import quantize_rows
    lib = ggml(bin_dir)
    rng = np.random.default_rng(0)
    cols = 512
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x *= np.float32(10.0) ** rng.integers(-30, 4, (n, 1)).astype(np.float32)
    kinds = rng.integers(0, 5, n)
    x[kinds == 1] = 0
    x[kinds == 2] = np.where(rng.random((int((kinds == 2).sum()), cols)) < 0.7, 0, x[kinds == 2])
    x[kinds == 3] = np.abs(x[kinds == 3])
    x[kinds == 4] = np.round(x[kinds == 4] * 3)
    for name in ("q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "f16", "bf16"):
        t = TYPES[name]
        ours = np.empty((n, t.row_bytes(cols)), np.uint8)
        quantize_rows(name, x, ours, os.cpu_count() or 1)
        theirs = np.zeros_like(ours)
        lib.ggml_quantize_chunk(int(t.gguf), x.ctypes.data, theirs.ctypes.data, 0, n, cols, None)
        eq = (ours.reshape(-1, t.nbytes) == theirs.reshape(-1, t.nbytes)).all(axis=1)
        print(f"{name}: {int(eq.sum()):,} of {eq.size:,} random blocks equal ({eq.mean():.4%})")
        if name in WEIGHTED:  # and with a random importance row
            imp = (rng.random(cols) ** 4 + 1e-3).astype(np.float32)
            quantize_rows(name, x, ours, os.cpu_count() or 1, imp)
            lib.ggml_quantize_chunk(int(t.gguf), x.ctypes.data, theirs.ctypes.data, 0, n, cols,
                                    imp.ctypes.data)
            eq = (ours.reshape(-1, t.nbytes) == theirs.reshape(-1, t.nbytes)).all(axis=1)
            print(f"{name} with an importance row: {int(eq.sum()):,} of {eq.size:,} equal "
                  f"({eq.mean():.4%})")


def speed(bin_dir: str) -> None:
    lib = ggml(bin_dir)
    x = (np.random.default_rng(0).standard_normal((32000, 768)) * 0.02).astype(np.float32)
    for name in ("q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "f16", "bf16"):
        t = TYPES[name]
        out = np.empty((x.shape[0], t.row_bytes(x.shape[1])), np.uint8)
        t0 = time.perf_counter()
        t.quantize(x, threads=1)
        t1 = time.perf_counter()
        lib.ggml_quantize_chunk(int(t.gguf), x.ctypes.data, out.ctypes.data, 0, *x.shape, None)
        times = (t1 - t0, time.perf_counter() - t1)
        print(f"{name}: qllama {x.nbytes / 1e6 / times[0]:,.0f} MB/s, llama.cpp's reference "
              f"{x.nbytes / 1e6 / times[1]:,.0f} MB/s (one thread)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="llama2.c fp32 file (version 0 or 1)")
    p.add_argument("-z", "--tokenizer", default=None)
    p.add_argument("--types", nargs="+", default=["q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0"],
                   choices=list(FTYPES))
    p.add_argument("--llama-cpp", default="/work/refs/llama.cpp/build/bin",
                   help="llama.cpp's build/bin (llama-quantize, libggml-base.so)")
    p.add_argument("--random", type=int, default=0, metavar="N",
                   help="also compare N random rows of 512 per block type, in process")
    p.add_argument("--calibrate", metavar="TEXT", default=None,
                   help="quantize both with qllama's importance matrix over TEXT "
                        "(--types q4_k_m, q5_k_m, q6_k)")
    p.add_argument("--speed", action="store_true",
                   help="MB/s of each block quantizer, ours and llama.cpp's, on one thread")
    args = p.parse_args()
    if args.model:
        check_model(args.model, args.tokenizer, args.types, args.llama_cpp, args.calibrate)
    if args.random:
        check_random(args.random, args.llama_cpp)
    if args.speed:
        speed(args.llama_cpp)


if __name__ == "__main__":
    main()
