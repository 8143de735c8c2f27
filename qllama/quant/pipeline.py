"""The streaming quantizer: an fp32 checkpoint (version 0 or 1) → Q8_0 (version 2).

The output is byte-identical to llama2.c's `export.py --version 2` for the same
weights, except that qllama picks a group size that divides every row (llama2.c
only checks dim) and writes zeros for an all-zero group (llama2.c divides 0 by 0).

Data flow: validated input header → output layout (formats.llama2c.layout) → for
each output tensor, chunks of the input read ahead by a thread (io.chunks) → the
weight quantizer (Cython, nogil, prange over groups) → int8 values and scales
written at their offsets, front to back in 2 MiB-aligned pieces by a writer thread
(io.blockwriter.QueuedWriter): reading, quantizing and writing overlap. Memory
stays bounded by a few chunks and the writer's queue whatever the model size.
"""
from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import FormatError, QllamaError, UsageError
from ..formats import llama2c
from ..formats.llama2c import F32, Q80, Config, Entry
from ..io.atomic import atomic_output, check_output_path
from ..io.blockwriter import QUEUED_CHUNKS, QueuedWriter
from ..io.chunks import CHUNK_BYTES, ChunkReader, check_free_space, open_input, read_jobs
from ..threads import resolve_threads
from .groups import choose_group_size

N_VALUE_BUFFERS = 4  # int8 chunks quantized ahead of the writer: 4 * 8 MB


@dataclass
class KindStats:
    """Summary of one tensor kind (all layers of it)."""

    shape: tuple
    encoding: str
    count: int = 0
    max_err: float = 0.0  # max |q*s - w| over every value (Q80); 0 for F32 copies


@dataclass
class Report:
    src: str
    dst: str
    src_version: int
    config: Config  # the output's (version 2)
    note: str | None
    in_bytes: int
    out_bytes: int
    seconds: float = 0.0
    threads: int = 1
    kinds: dict = field(default_factory=dict)  # name -> KindStats, in file order

    @property
    def mb_per_s(self) -> float:
        return self.in_bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def kind_stats(entries: list[Entry]) -> dict:
    """name -> KindStats of each tensor kind, in file order (errors filled in later)."""
    kinds = {}
    for e in entries:
        kinds.setdefault(e.name, KindStats(e.shape, e.encoding)).count += 1
    return kinds


def tensor_label(e: Entry) -> str:
    return e.name if e.layer is None else f"{e.name} of layer {e.layer}"


def _non_finite(path: str, e: Entry, start: int, w: np.ndarray, label=tensor_label) -> FormatError:
    i = int(np.flatnonzero(~np.isfinite(w))[0])
    flat = start + i
    index = np.unravel_index(flat, e.shape)
    return FormatError(f"{path}: {label(e)} holds {w[i]} at element {flat} "
                       f"(index {tuple(int(x) for x in index)}); refusing to quantize "
                       "a non-finite weight")


def widen_bf16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values given as their bits (uint16) → float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


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
                raise _non_finite(self.src, e, start, w, self.label)
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
                raise _non_finite(self.src, e, start, w, self.label)
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


def check_written(fd: int, dst: str, size: int) -> None:
    """The output's size is the layout's (cannot differ unless the layout is wrong)."""
    written = os.fstat(fd).st_size
    if written != size:
        raise QllamaError(f"{dst}: wrote {written} bytes, expected {size}")


def quantize_file(src: str, dst: str, group_size: int | None = None, force: bool = False,
                  threads: int | None = None, progress=None,
                  chunk_bytes: int = CHUNK_BYTES) -> Report:
    """Quantize checkpoint `src` (v0/v1) into `dst` (v2). Raises QllamaError on bad input.

    `progress(done)` is called after each chunk with the weight bytes read so far (of
    4 * config.n_params() in all: headers and v0's rope tables are not read).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    threads = resolve_threads(threads)
    fd, cin = open_input(src)
    try:
        if cin.version == 2:
            raise UsageError(f"{src}: already quantized (version 2, group size "
                             f"{cin.group_size}); quantize reads fp32 files (versions 0 and 1)")
        gs, note = choose_group_size(cin, group_size)
        cout = cin.as_version(2, gs)
        llama2c.validate(cout, dst)
        out_size = llama2c.expected_size(cout)
        check_output_path(dst, force, (src,))
        check_free_space(dst, out_size)
        out_entries = llama2c.layout(cout)
        step = max(gs, (chunk_bytes // 4) // gs * gs)  # values per chunk: whole groups
        jobs = read_jobs(out_entries, llama2c.layout(cin), step)
        in_bytes = sum(4 * e.numel for e in out_entries)
        report = Report(src, dst, cin.version, cout, note, os.fstat(fd).st_size, out_size,
                        threads=threads, kinds=kind_stats(out_entries))

        t0 = time.perf_counter()
        done = 0
        with atomic_output(dst, force, (src,)) as f, QueuedWriter(
                f.fileno(), QUEUED_CHUNKS * chunk_bytes) as out:
            out.pwrite(llama2c.header_bytes(cout), 0)
            tensors = TensorWriter(out, cout, step, threads, report.kinds, src,
                                   chunk_bytes=chunk_bytes)
            reader = ChunkReader(fd, src, jobs, step)
            try:
                for (_, n, e, start), w in reader:
                    tensors.write(e, start, w)
                    done += 4 * n
                    if progress is not None:
                        progress(done)
            finally:
                reader.close()
            out.flush()
            check_written(f.fileno(), dst, out_size)
        report.seconds = time.perf_counter() - t0
        assert done == in_bytes
        return report
    finally:
        os.close(fd)
