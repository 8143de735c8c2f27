"""`qllama quantize`: an fp32 checkpoint (version 0 or 1) → Q8_0 (version 2).

The output is byte-identical to llama2.c's `export.py --version 2` for the same
weights, except that qllama picks a group size that divides every row (llama2.c
only checks dim) and writes zeros for an all-zero group (llama2.c divides 0 by 0).

Data flow: validated input header → output layout (formats.layout) → for each
output tensor, chunks of the input read with preadv into reused buffers (a
reader thread fills the next chunk while this one is quantized) → the Cython
kernel (nogil, prange over groups) → int8 values and scales written at their
offsets, front to back in 2 MiB-aligned pieces (blockwriter.py). Memory stays
bounded by a few chunks whatever the model size; input pages are read, never
mapped, so they do not count in the process's RSS.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import formats
from .atomic import atomic_output, check_output_path
from .blockwriter import BlockWriter
from .errors import FormatError, QllamaError, UsageError
from .formats import F32, Q80, Config, Entry
from .threads import add_threads_argument, resolve_threads

DEFAULT_GROUP_SIZE = 64
CHUNK_BYTES = 32 << 20  # fp32 bytes read per chunk: large enough that per-chunk Python is noise
N_BUFFERS = 3  # one being read, one being quantized, one spare


# ---------------------------------------------------------------------------
# Group size


def choose_group_size(config: Config, requested: int | None = None) -> tuple[int, str | None]:
    """The group size to quantize with, and a note when the default had to back off.

    Default (requested None): the largest power of two <= 64 that divides both dim
    and hidden_dim, so no group straddles two rows. An explicit size must divide
    them itself: it is used as given or refused.
    """
    rows = (("dim", config.dim), ("hidden_dim", config.hidden_dim))
    if requested is not None:
        if requested <= 0:
            raise UsageError(f"--group-size must be positive, got {requested}")
        for what, n in rows:
            if n % requested:
                best = _largest_pow2_dividing(config, requested)
                raise UsageError(
                    f"--group-size {requested} does not divide {what} {n}, so its groups "
                    f"would straddle rows (llama2.c's runq.c misreads such files); the "
                    f"largest power of two <= {requested} that divides dim {config.dim} and "
                    f"hidden_dim {config.hidden_dim} is {best}")
        return requested, None
    gs = _largest_pow2_dividing(config, DEFAULT_GROUP_SIZE)
    note = None
    if gs != DEFAULT_GROUP_SIZE:
        note = (f"group size {DEFAULT_GROUP_SIZE} does not divide both dim {config.dim} and "
                f"hidden_dim {config.hidden_dim}; using {gs}")
    return gs, note


def _largest_pow2_dividing(config: Config, limit: int) -> int:
    gs = 1 << (limit.bit_length() - 1)  # largest power of two <= limit
    while config.dim % gs or config.hidden_dim % gs:
        gs //= 2
    return gs


# ---------------------------------------------------------------------------
# Reading: chunks of an input file, prefetched by a thread into reused buffers


def read_exact(fd: int, buf: memoryview, offset: int, path: str) -> None:
    """Fill `buf` from `offset` of `fd` (preadv until full; EOF is an error)."""
    done, n = 0, len(buf)
    while done < n:
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got == 0:
            raise FormatError(f"{path}: file ended at byte {offset + done} while reading "
                              "(did it change while qllama was reading it?)")
        done += got


class ChunkReader:
    """Reads (offset, n_floats, ...) jobs into a few reused float32 buffers.

    Jobs whose input bytes follow each other are merged into one read of up to
    `buf_floats` values (a model's many small tensors then cost a few large reads,
    not many small cold ones). A thread reads ahead (preadv releases the GIL)
    while the caller computes on the previous buffer. Iterate to get
    (job, float32 view of its values); a view is valid until the next step.
    """

    def __init__(self, fd: int, path: str, jobs: list, buf_floats: int,
                 n_buffers: int = N_BUFFERS):
        self.fd, self.path = fd, path
        self.reads = []  # (offset, n_floats, [(job, first float in buffer)])
        for job in jobs:
            offset, n = job[0], job[1]
            if self.reads:
                r_off, r_n, parts = self.reads[-1]
                if r_off + 4 * r_n == offset and r_n + n <= buf_floats:
                    parts.append((job, r_n))
                    self.reads[-1] = (r_off, r_n + n, parts)
                    continue
            self.reads.append((offset, n, [(job, 0)]))
        self.free: queue.Queue = queue.Queue()
        self.full: queue.Queue = queue.Queue()
        for _ in range(min(n_buffers, len(self.reads)) or 1):
            self.free.put(np.empty(buf_floats, dtype=np.float32))  # (buf_floats,)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="qllama-reader", daemon=True)

    def _run(self) -> None:
        try:
            for offset, n, _ in self.reads:
                while True:
                    try:
                        buf = self.free.get(timeout=0.1)
                        break
                    except queue.Empty:
                        if self.stop.is_set():
                            return
                if self.stop.is_set():
                    return
                read_exact(self.fd, memoryview(buf[:n]).cast("B"), offset, self.path)
                self.full.put((True, buf))
        except BaseException as e:  # handed to the consumer, raised there
            self.full.put((False, e))

    def __iter__(self):
        self.thread.start()
        try:
            for _, _, parts in self.reads:
                ok, buf = self.full.get()
                if not ok:
                    raise buf
                for job, first in parts:
                    yield job, buf[first:first + job[1]]
                self.free.put(buf)
        finally:
            self.stop.set()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()  # at most one chunk's read: then the fd may be closed


def open_input(path: str) -> tuple[int, Config]:
    """Validate and open an input checkpoint; returns (fd, config)."""
    config = formats.read_config(path)
    fd = os.open(path, os.O_RDONLY)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd, config


def check_free_space(path: str, nbytes: int) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(parent)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < nbytes:
        raise UsageError(f"{path}: needs {nbytes / 1e6:,.1f} MB but only "
                         f"{free / 1e6:,.1f} MB are free on its filesystem")


# ---------------------------------------------------------------------------
# Quantizing


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


def _non_finite(path: str, e: Entry, start: int, w: np.ndarray) -> FormatError:
    i = int(np.flatnonzero(~np.isfinite(w))[0])
    flat = start + i
    index = np.unravel_index(flat, e.shape)
    where = e.name if e.layer is None else f"{e.name} of layer {e.layer}"
    return FormatError(f"{path}: {where} holds {w[i]} at element {flat} "
                       f"(index {tuple(int(x) for x in index)}); refusing to quantize "
                       "a non-finite weight")


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
        formats.validate(cout, dst)
        out_size = formats.expected_size(cout)
        check_output_path(dst, force, (src,))
        check_free_space(dst, out_size)
        where = {(e.name, e.layer): e for e in formats.layout(cin)}
        out_entries = formats.layout(cout)

        # One job per chunk: (input offset, n_floats, output entry, first value index)
        step = max(gs, (chunk_bytes // 4) // gs * gs)
        jobs = []
        for e in out_entries:
            ein = where[(e.name, e.layer)]
            for start in range(0, e.numel, step):
                jobs.append((ein.offset + 4 * start, min(step, e.numel - start), e, start))
        in_bytes = sum(4 * e.numel for e in out_entries)
        report = Report(src, dst, cin.version, cout, note, os.fstat(fd).st_size, out_size,
                        threads=threads)
        for e in out_entries:
            k = report.kinds.setdefault(e.name, KindStats(e.shape, e.encoding))
            k.count += 1

        q = np.empty(step, dtype=np.int8)  # (step,) values of one chunk
        # A tensor's scales are held and written after all its values, so the file is
        # written front to back and every 2 MiB block in one piece (blockwriter.py);
        # scales larger than a chunk (tiny groups) go out chunk by chunk instead.
        def holds(e: Entry) -> bool:
            return 4 * (e.numel // gs) <= chunk_bytes

        held = [e.numel // gs for e in out_entries if e.encoding == Q80 and holds(e)]
        s = np.empty(max([step // gs, *held]), dtype=np.float32)  # scales of one tensor or chunk
        err = np.empty(step // gs, dtype=np.float32)  # (step / gs,) max error per group
        from ._kernels.q80 import quantize as q80_quantize

        t0 = time.perf_counter()
        done = 0
        with atomic_output(dst, force, (src,)) as f:
            out = BlockWriter(f.fileno())
            out.pwrite(formats.header_bytes(cout), 0)
            reader = ChunkReader(fd, src, jobs, step)
            try:
                for (_, n, e, start), w in reader:
                    if e.encoding == F32:
                        if not np.isfinite(w).all():
                            raise _non_finite(src, e, start, w)
                        out.pwrite(w, e.offset + 4 * start)
                    else:
                        hold = holds(e)
                        g, g0 = n // gs, start // gs if hold else 0
                        q80_quantize(w, gs, q[:n], s[g0:g0 + g], err[:g], threads)
                        emax = float(err[:g].max())
                        if emax != emax:  # NaN: a group held NaN or Inf
                            raise _non_finite(src, e, start, w)
                        k = report.kinds[e.name]
                        k.max_err = max(k.max_err, emax)
                        out.pwrite(q[:n], e.offset + start)
                        if not hold:
                            out.pwrite(s[:g], e.scales_offset + 4 * (start // gs))
                        elif start + n == e.numel:
                            out.pwrite(s[:g0 + g], e.scales_offset)
                    done += 4 * n
                    if progress is not None:
                        progress(done)
            finally:
                reader.close()
            out.flush()
            if os.fstat(f.fileno()).st_size != out_size:  # cannot happen unless layout is wrong
                raise QllamaError(f"{dst}: wrote {os.fstat(f.fileno()).st_size} bytes, "
                                  f"expected {out_size}")
        report.seconds = time.perf_counter() - t0
        assert done == in_bytes
        return report
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# CLI


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"


def print_report(report: Report, console) -> None:
    from rich.table import Table

    c = report.config
    table = Table(title=f"{report.dst}: Q8_0, group size {c.group_size}",
                  title_justify="left")
    table.add_column("tensor")
    table.add_column("shape", justify="right")
    table.add_column("count", justify="right")
    table.add_column("encoding")
    table.add_column("max |q·s − w|", justify="right")
    for name, k in report.kinds.items():
        err = f"{k.max_err:.3g}" if k.encoding == Q80 else "(fp32 copy)"
        table.add_row(name, "×".join(map(str, k.shape)), str(k.count),
                      "Q8_0" if k.encoding == Q80 else "fp32", err)
    console.print(table)
    console.print(
        f"{report.src} (version {report.src_version}, {_fmt_bytes(report.in_bytes)}) → "
        f"{report.dst} (version 2, {_fmt_bytes(report.out_bytes)}, "
        f"{report.in_bytes / report.out_bytes:.2f}× smaller) in {report.seconds:.2f} s, "
        f"{report.mb_per_s:,.0f} MB/s, {report.threads} thread(s)", highlight=False)


def run(args) -> int:
    from .console import console

    err_console = console(stderr=True)
    show_progress = not args.quiet and err_console.is_terminal
    progress_cb = None
    bar = None
    if show_progress:
        from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                                   TransferSpeedColumn)
        bar = Progress("[progress.description]{task.description}", BarColumn(),
                       DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                       console=err_console, transient=True)
    try:
        if bar is not None:
            total = 4 * formats.read_config(args.input).n_params()  # weight bytes to read
            task = bar.add_task("quantizing", total=total)
            bar.start()
            progress_cb = lambda n: bar.update(task, completed=n)  # noqa: E731
        report = quantize_file(args.input, args.output, args.group_size, args.force,
                               args.threads, progress_cb)
    finally:
        if bar is not None:
            bar.stop()
    if report.note and not args.quiet:
        print(f"qllama: note: {report.note}", file=sys.stderr)
    if not args.quiet:
        print_report(report, console())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quantize", help="fp32 checkpoint (version 0/1) → int8 Q8_0 (version 2)",
        description="Quantize a llama2.c fp32 checkpoint (version 0 or 1, detected from the "
                    "file) into Q8_0 (version 2), byte-identical to llama2.c's export.py.")
    p.add_argument("input", metavar="IN", help="fp32 checkpoint (version 0 or 1)")
    p.add_argument("output", metavar="OUT", help="version 2 file to write")
    p.add_argument("--group-size", type=int, default=None, metavar="N",
                   help="values per scale; default: the largest power of two <= 64 that "
                        "divides dim and hidden_dim (an explicit N must divide both)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    add_threads_argument(p, "quantization")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar, note or summary")
    p.set_defaults(func=run)
