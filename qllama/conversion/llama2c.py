"""llama2.c file → llama2.c file: fp32 (version 0 or 1) into version 0, 1 or 2.

One driver for `quantize` (→ v2, Q8_0) and `convert` (v0 ↔ v1): validated input
header → output layout (formats.llama2c.layout) → for each output tensor, chunks of
the input read ahead by a thread (sources.Llama2cSource.values) → the tensor writer (a v2
entry through the weight quantizer: Cython, nogil, prange over groups) → written at
their offsets, front to back in 2 MiB-aligned pieces by a writer thread
(io.blockwriter.QueuedWriter): reading, quantizing and writing overlap. Memory stays
bounded by a few chunks and the writer's queue whatever the model size.

The v2 output is byte-identical to llama2.c's `export.py --version 2` for the same
weights, except that qllama picks a group size that divides every row (llama2.c
only checks dim) and writes zeros for an all-zero group (llama2.c divides 0 by 0).
v0 → v1 and same-version copies are byte-identical to llama2.c's exporters; v1 → v0
recomputes the rotary tables (formats.rope).
"""
from __future__ import annotations

import contextlib
import math
import os
import time

from ..errors import UsageError
from ..formats import is_gguf, llama2c
from ..formats.llama2c import Config
from ..formats.rope import rope_chunks
from ..io.atomic import atomic_output, check_output_path, check_written
from ..io.blockwriter import QUEUED_CHUNKS, QueuedWriter
from ..io.chunks import CHUNK_BYTES, check_free_space
from ..quant.groups import choose_group_size
from ..threads import resolve_threads
from .llama2c_sink import TensorWriter
from .report import Report, kind_stats
from .sources import GGUFSource, Llama2cSource, refuse_quantized


def fill(out, cout: Config, chunks, write, tables=(), progress=None,
         chunk_bytes: int = CHUNK_BYTES) -> int:
    """The llama2.c sink's loop: the header of `cout`, then every chunk (entry, first
    value, values, release, input bytes) through write(entry, first, values, release),
    in file order, into the QueuedWriter `out`; returns the input bytes. `tables`
    (v0's rotary tables, entries the input lacks) are computed in their place, so the
    file is still written front to back. `progress(done)` after each chunk."""
    out.pwrite(llama2c.header_bytes(cout), 0)

    def write_tables(tables):
        row_bytes = 4 * (cout.head_size // 2)
        for i, t in enumerate(tables):  # freqs_cos, then freqs_sin
            for start, *cos_sin in rope_chunks(cout.head_size, cout.seq_len, chunk_bytes):
                out.pwrite(cos_sin[i], t.offset + start * row_bytes)

    done = 0
    for e, start, w, release, nbytes in chunks:
        if tables and e.offset > tables[0].offset:
            write_tables(tables)
            tables = ()
        write(e, start, w, release)
        done += nbytes
        if progress is not None:
            progress(done)
    if tables:
        write_tables(tables)
    out.flush()
    return done


def write_file(source, values, dst: str, cout: Config, force: bool, chunk_bytes: int,
               writer, tables=(), progress=None) -> int:
    """Write `cout` to `dst`, atomically, through fill(), from `values` (a context
    manager of (output entry, first value, flat float32 values) in the output's file
    order, read from `source`); returns the fp32 bytes read. `writer(out)` gives
    write(entry, first value, values, release) for the output's QueuedWriter."""
    with atomic_output(dst, force, tuple(source.inputs)) as f, QueuedWriter(
            f.fileno(), QUEUED_CHUNKS * chunk_bytes) as out, values as vs:
        chunks = ((e, start, w, None, 4 * w.size) for e, start, w in vs)
        done = fill(out, cout, chunks, writer(out), tables, progress, chunk_bytes)
        check_written(f.fileno(), dst, llama2c.expected_size(cout))
    return done


def rewrite(source: Llama2cSource, dst: str, cout: Config, force: bool,
            step: int, chunk_bytes: int, writer, progress=None) -> int:
    """write_file() of the fp32 llama2.c `source` in chunks of `step` values; v0's rotary
    tables, which a v1 input lacks, computed in their place."""
    out_entries = llama2c.layout(cout)
    in_entries = {(e.name, e.layer): e for e in source.entries}
    tables = [e for e in out_entries if (e.name, e.layer) not in in_entries]  # v0's freqs
    return write_file(source, source.values(in_entries, out_entries, step), dst, cout, force,
                      chunk_bytes, writer, tables, progress)


@contextlib.contextmanager
def _row_values(source, plan: list):
    """The rows of `plan`'s jobs (output entry, r0, r1) as write_file's values."""
    with source.chunks(plan) as chunks:
        yield ((e, r0 * (e.numel // e.shape[0]), w.reshape(-1)) for (e, r0, _), w in chunks)


def copy_rows(source, plan: list, dst: str, cout: Config, force: bool, chunk_bytes: int,
              writer, progress=None) -> int:
    """write_file() from any row source (conversion.sources), through the jobs (output
    entry, r0, r1) of `plan`, in the output's file order."""
    return write_file(source, _row_values(source, plan), dst, cout, force, chunk_bytes,
                      writer, (), progress)


def row_plan(source, cout: Config, chunk_bytes: int) -> list:
    """(output entry, r0, r1) for every chunk of whole Q8_0 groups of rows."""
    gs, plan = max(cout.group_size, 1), []
    for e in llama2c.layout(cout):
        cols = e.numel // e.shape[0]
        step = source.row_step(e, gs // math.gcd(cols, gs), chunk_bytes)
        plan.extend((e, r0, min(e.shape[0], r0 + step)) for r0 in range(0, e.shape[0], step))
    return plan


def check_fits_llama2c(source: GGUFSource) -> None:
    """A GGUF input's spec must be what llama2.c files leave implicit (run.c's
    constants), or the output would compute another model."""
    s, d = source.spec, source.config.spec  # the latter with llama2.c's constants
    if (s.rope_theta, s.norm_eps, s.bos_id, s.eos_id) != (d.rope_theta, d.norm_eps,
                                                          d.bos_id, d.eos_id):
        raise UsageError(
            f"{source.path}: rope theta {s.rope_theta:g}, norm epsilon {s.norm_eps:g}, BOS "
            f"{s.bos_id}, EOS {s.eos_id}; a llama2.c file implies {d.rope_theta:g}, "
            f"{d.norm_eps:g}, {d.bos_id}, {d.eos_id}: write a .gguf output instead")


def quantize_file(src: str, dst: str, group_size: int | None = None, force: bool = False,
                  threads: int | None = None, progress=None,
                  chunk_bytes: int = CHUNK_BYTES) -> Report:
    """Quantize checkpoint `src` (v0/v1, or an F32/F16/BF16 GGUF file whose spec llama2.c
    can carry) into `dst` (v2). Raises QllamaError on bad input.

    `progress(done)` is called after each chunk with the weight bytes read so far (of
    4 * config.n_params() in all: headers and v0's rope tables are not read).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    threads = resolve_threads(threads)
    with (GGUFSource(src) if is_gguf(src) else Llama2cSource(src)) as source:
        fd, cin = source.fd, source.config
        rows = isinstance(source, GGUFSource)
        if rows:
            refuse_quantized(source)
            check_fits_llama2c(source)
        elif cin.version == 2:
            raise UsageError(f"{src}: already quantized (version 2, group size "
                             f"{cin.group_size}); quantize reads fp32 files (versions 0 and 1)")
        gs, note = choose_group_size(cin, group_size)
        cout = cin.as_version(2, gs)
        llama2c.validate(cout, dst)
        out_size = llama2c.expected_size(cout)
        check_output_path(dst, force, tuple(source.inputs))
        check_free_space(dst, out_size)
        out_entries = llama2c.layout(cout)
        if rows:
            plan = row_plan(source, cout, chunk_bytes)
            step = max((r1 - r0) * (e.numel // e.shape[0]) for e, r0, r1 in plan)
        else:
            step = max(gs, (chunk_bytes // 4) // gs * gs)  # values per chunk: whole groups
        in_bytes = sum(4 * e.numel for e in out_entries)
        report = Report(src, dst, cin.version, cout, notes=[note] if note else [],
                        in_bytes=os.fstat(fd).st_size, out_bytes=out_size, threads=threads,
                        kinds=kind_stats(out_entries), source=source.label)

        def writer(out):
            return TensorWriter(out, cout, step, threads, report.kinds, src,
                                chunk_bytes=chunk_bytes).write

        t0 = time.perf_counter()
        if rows:
            done = copy_rows(source, plan, dst, cout, force, chunk_bytes, writer, progress)
        else:
            done = rewrite(source, dst, cout, force, step, chunk_bytes, writer, progress)
        report.seconds = time.perf_counter() - t0
        assert done == in_bytes
        return report


def convert_file(src: str, dst: str, to_version: int, force: bool = False,
                 chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Write checkpoint `src` (v0/v1) as fp32 version `to_version` (0 or 1) to `dst`."""
    src, dst = os.fspath(src), os.fspath(dst)
    if to_version not in (0, 1):
        raise UsageError(f"convert writes versions 0 and 1, not {to_version} "
                         "(use `qllama quantize` for version 2)")
    if is_gguf(src):
        raise UsageError(f"{src}: a GGUF file; convert rewrites llama2.c fp32 files (versions "
                         "0 and 1); `qllama quantize` reads an F32/F16/BF16 GGUF file")
    with Llama2cSource(src) as source:
        fd, cin = source.fd, source.config
        if cin.version == 2:
            raise UsageError(f"{src}: is version 2 (Q8_0); convert handles fp32 files "
                             "(versions 0 and 1)")
        cout = cin.as_version(to_version)
        out_size = llama2c.expected_size(cout)
        check_output_path(dst, force, (src,))
        check_free_space(dst, out_size)
        present = {(e.name, e.layer) for e in llama2c.layout(cin)}
        recomputed = any((e.name, e.layer) not in present for e in llama2c.layout(cout))

        def writer(out):  # fp32 values as they are (a copy checks nothing)
            return lambda e, start, w, release: out.pwrite(w, e.offset + 4 * start)

        t0 = time.perf_counter()
        rewrite(source, dst, cout, force, chunk_bytes // 4, chunk_bytes, writer)
        seconds = time.perf_counter() - t0
        return {"src_version": cin.version, "version": to_version,
                "in_bytes": os.fstat(fd).st_size, "out_bytes": out_size, "seconds": seconds,
                "recomputed_freqs": recomputed}
