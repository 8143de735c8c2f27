"""Reading an input checkpoint in large chunks, a thread ahead of the caller.

A converter (quantize, convert) walks the output's tensors in file order and needs
each one's values from the input, which may store them in another order. `read_jobs`
plans one job per chunk; `ChunkReader` merges jobs whose input bytes follow each
other into one `preadv` into a reused buffer, while the caller works on the last.
Input pages are read, never mapped, so they do not count in the process's RSS.
"""
from __future__ import annotations

import os
import queue
import threading

import numpy as np

from ..errors import UsageError
from .inputs import read_exact

CHUNK_BYTES = 32 << 20  # fp32 bytes read per chunk: large enough that per-chunk Python is noise
N_BUFFERS = 3  # one being read, one being worked on, one spare


def read_jobs(out_entries: list, in_entries: list, step: int) -> list[tuple]:
    """(input offset, n_floats, output entry, first value index) for every chunk of at
    most `step` values of each output tensor the input holds, in output order. Entries
    are any layout's with .name, .layer, .offset (of fp32 values) and .numel."""
    where = {(e.name, e.layer): e for e in in_entries}
    jobs = []
    for e in out_entries:
        ein = where.get((e.name, e.layer))
        if ein is None:
            continue  # not in the input (v0's rope tables, written by the caller)
        for start in range(0, e.numel, step):
            jobs.append((ein.offset + 4 * start, min(step, e.numel - start), e, start))
    return jobs


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


def prefetch(items, depth: int = 2):
    """Iterate `items` in a thread, up to `depth` items ahead of the caller: the
    reads of the next chunks overlap the work on this one (a reader's errors are
    raised in the caller). Close the generator (contextlib.closing) to stop it."""
    slots: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, end))
        except BaseException as e:  # handed to the consumer, raised there
            put((False, e))

    thread = threading.Thread(target=run, name="qllama-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = slots.get()
            if not ok:
                raise item
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()  # at most the item being read: then its files may be closed
