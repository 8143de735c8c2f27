"""The memory bandwidth probe (membench.c), compiled on first use into runs/ with
the system's C compiler and loaded with ctypes: `read_sum(buf, threads)`."""
from __future__ import annotations

import ctypes
import os
import subprocess
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "runs" / "membench.so"


def _library() -> ctypes.CDLL:
    src = HERE / "membench.c"
    if not BUILD.exists() or BUILD.stat().st_mtime < src.stat().st_mtime:
        BUILD.parent.mkdir(parents=True, exist_ok=True)
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(src),
                        "-o", str(BUILD)], check=True)
    lib = ctypes.CDLL(str(BUILD))
    lib.qllama_read_sum.restype = ctypes.c_uint64
    lib.qllama_read_sum.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
    lib.qllama_read_rows.restype = ctypes.c_uint64
    lib.qllama_read_rows.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t,
                                     ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_int,
                                     ctypes.c_int]
    return lib


_lib = None


def _lib_loaded() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _library()
    return _lib


def read_sum(buf: np.ndarray, threads: int = 1) -> tuple[int, float]:
    """Sum every word of `buf` (uint64, contiguous) with `threads` threads;
    returns (sum, seconds)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    buf = np.ascontiguousarray(buf, dtype=np.uint64)
    t0 = time.perf_counter()
    total = _lib_loaded().qllama_read_sum(buf.ctypes.data, buf.size, threads)
    return total, time.perf_counter() - t0


def read_rows(q: np.ndarray, s: np.ndarray, cols: int, gs: int, four: bool,
              threads: int = 1) -> tuple[int, float]:
    """Read a Q8_0 matrix (int8 values q, rows x cols, and its fp32 scales s) in a decode
    kernel's order, rows one after another or four at a time (membench.c);
    returns (sum, seconds)."""
    if q.dtype != np.int8 or s.dtype != np.float32 or q.size % cols or cols % gs or cols % 32:
        raise ValueError("q must be int8 rows of cols values, in groups of gs")
    if s.size != q.size // gs or not (q.flags.c_contiguous and s.flags.c_contiguous):
        raise ValueError("s must hold one contiguous scale per group")
    t0 = time.perf_counter()
    total = _lib_loaded().qllama_read_rows(q.ctypes.data, s.ctypes.data, q.size // cols, cols,
                                           gs, int(four), threads)
    return total, time.perf_counter() - t0
