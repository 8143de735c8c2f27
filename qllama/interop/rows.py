"""A llama2.c checkpoint (version 0, 1 or 2) read tensor by tensor in chunks of whole
rows, as float32: Q8_0 tensors dequantized as the format defines (int8 · scale).

The file is read with pread, never mapped, so its pages do not count in the
process's resident set; the next chunk is read by a thread while the caller works
on this one (io.chunks.prefetch). Memory: a few chunks.
"""
from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from ..formats.llama2c import F32, Entry, dequantize_q80, layout, open_input
from ..io.chunks import CHUNK_BYTES, prefetch
from ..io.inputs import read_exact


class Llama2cReader:
    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.inputs = [self.path]  # every file read
        self.fd, self.config = open_input(self.path)
        self.entries = layout(self.config)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def weights(self) -> list[Entry]:
        """The tensors a model computes with, in file order (not v0's rope tables)."""
        return [e for e in self.entries if e.name not in ("freqs_cos", "freqs_sin")]

    def row_step(self, e: Entry, unit: int = 1, chunk_bytes: int = CHUNK_BYTES) -> int:
        """Rows per chunk: a multiple of `unit`, and of whole Q8_0 groups."""
        cols = e.numel // e.shape[0]
        if e.encoding != F32:
            gs = self.config.group_size
            unit = math.lcm(unit, gs // math.gcd(cols, gs))
        return max(unit, chunk_bytes // (4 * cols) // unit * unit)

    def read(self, e: Entry, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of `e`, (r1 - r0, cols) float32 (1-D tensors: (r1 - r0,))."""
        cols = e.numel // e.shape[0]
        n = (r1 - r0) * cols
        if e.encoding == F32:
            w = np.empty(n, np.float32)
            read_exact(self.fd, memoryview(w).cast("B"), e.offset + 4 * r0 * cols, self.path)
        else:
            gs = self.config.group_size
            q = np.empty(n, np.int8)
            s = np.empty(n // gs, np.float32)
            read_exact(self.fd, memoryview(q).cast("B"), e.offset + r0 * cols, self.path)
            read_exact(self.fd, memoryview(s).cast("B"), e.scales_offset + 4 * (r0 * cols // gs),
                       self.path)
            w = dequantize_q80(q, s, gs)
        return w.reshape((r1 - r0, cols) if len(e.shape) > 1 else (r1 - r0,))

    def chunks(self, plan):
        """(job, rows) for each job (entry, r0, r1, ...), read a thread ahead; a context
        manager (leaving it stops the reading thread)."""
        return contextlib.closing(prefetch((job, self.read(*job[:3])) for job in plan))


def resolve_tokenizer(src: str, tokenizer: str | None) -> str:
    """The given tokenizer, else tokenizer.model or tokenizer.bin beside the model (in
    it, for a Hugging Face folder)."""
    if tokenizer is not None:
        return os.fspath(tokenizer)
    folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    for name in ("tokenizer.model", "tokenizer.bin"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return ""
