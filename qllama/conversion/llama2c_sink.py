"""Tensors into a llama2.c file (version 1 or 2) from float32 (or bf16) chunks."""
from __future__ import annotations

import queue

import numpy as np

from ..formats import llama2c
from ..formats.llama2c import F32, Q80, Config, Entry
from ..io.chunks import CHUNK_BYTES
from ..quant.blocks import widen_bf16
from .report import non_finite, tensor_label

N_VALUE_BUFFERS = 4  # int8 chunks quantized ahead of the writer: 4 * 8 MB


class TensorWriter:
    """Writes the tensors of an output file (version 1 or 2) chunk by chunk, in file
    order, from float32 values: fp32 entries as they are, Q8_0 entries through the
    weight quantizer (Cython, nogil, prange over groups). Refuses NaN and Inf, naming
    the tensor as `label(entry)` does, and keeps each kind's largest quantization
    error in `kinds` (name -> KindStats).

    `write(e, start, w)`: `w` holds values start .. start + len(w) of entry `e`, at
    most `step` of them, a whole number of groups; a tensor's chunks come in order.
    `w` is float32, or uint16: bfloat16's bits, widened in the quantizer's own pass.
    With `release`, `w` is the caller's until `release()` is called (an fp32 entry's
    values are then written from `w` itself, not copied into the writer's queue).
    """

    def __init__(self, out, config: Config, step: int, threads: int,
                 kinds: dict, src: str, label=tensor_label,
                 chunk_bytes: int = CHUNK_BYTES):
        self.out, self.threads, self.kinds = out, threads, kinds
        self.src, self.label = src, label
        self.gs = gs = config.group_size
        self.chunk_bytes = chunk_bytes
        if config.version != 2:
            return
        from .._kernels.quantize_weights import quantize_weights, quantize_weights_bf16
        self._quantize = {np.dtype(np.float32): quantize_weights,
                          np.dtype(np.uint16): quantize_weights_bf16}
        # (step,) int8 values of one chunk each: one being quantized while the others
        # wait in the writer's queue (QueuedWriter), handed back once written.
        self.pool: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(N_VALUE_BUFFERS):
            self.pool.put(np.empty(step, dtype=np.int8))
        held = [e.numel // gs for e in llama2c.layout(config)
                if e.encoding == Q80 and self.holds(e)]
        # scales of one tensor or chunk
        self.s = np.empty(max([step // gs, *held]), dtype=np.float32)
        self.err = np.empty(step // gs, dtype=np.float32)  # (step / gs,) max error per group

    def holds(self, e: Entry) -> bool:
        """A tensor's scales are held and written after all its values, so the file is
        written front to back and every 2 MiB block in one piece (blockwriter.py);
        scales larger than a chunk (tiny groups) go out chunk by chunk instead."""
        return 4 * (e.numel // self.gs) <= self.chunk_bytes

    def write(self, e: Entry, start: int, w: np.ndarray, release=None) -> None:
        if e.encoding == F32:
            if w.dtype == np.uint16:
                w = widen_bf16(w)
            if not np.isfinite(w).all():
                if release is not None:
                    release()
                raise non_finite(self.src, e, start, w, self.label)
            self.out.pwrite(w, e.offset + 4 * start, release=release)
            return
        try:
            self._write_q80(e, start, w)
        finally:
            if release is not None:
                release()

    def _write_q80(self, e: Entry, start: int, w: np.ndarray) -> None:
        out, n = self.out, len(w)
        gs, s, err = self.gs, self.s, self.err
        hold = self.holds(e)
        g, g0 = n // gs, start // gs if hold else 0
        q = self.pool.get()
        try:
            self._quantize[w.dtype](w, gs, q[:n], s[g0:g0 + g], err[:g], self.threads)
            emax = float(err[:g].max())
            if emax != emax:  # NaN: a group held NaN or Inf
                if w.dtype == np.uint16:
                    w = widen_bf16(w)
                raise non_finite(self.src, e, start, w, self.label)
        except BaseException:
            self.pool.put(q)
            raise
        k = self.kinds[e.name]
        k.max_err = max(k.max_err, emax)
        out.pwrite(q[:n], e.offset + start, release=lambda: self.pool.put(q))
        if not hold:
            out.pwrite(s[:g], e.scales_offset + 4 * (start // gs))
        elif start + n == e.numel:
            out.pwrite(s[:g0 + g], e.scales_offset)
