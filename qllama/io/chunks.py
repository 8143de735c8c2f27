"""Reading an input checkpoint in large chunks, a thread ahead of the caller.

Every row source (conversion.sources) and the Hugging Face import read the same
way: `read_ahead` reads each job's byte spans with pread into a ring of reused
buffers, a thread ahead of the caller (`prefetch`); a large contiguous span is read
O_DIRECT, from the disk into the buffer with no page-cache copy. Input pages are
read, never mapped, so they do not count in the process's RSS.
"""
from __future__ import annotations

import collections
import errno
import mmap
import os
import threading

from ..errors import FormatError, UsageError
from .inputs import read_exact

CHUNK_BYTES = 32 << 20  # fp32 bytes read per chunk: large enough that per-chunk Python is noise
PREFETCH_DEPTH = 2
# the caller's job, the queued ones and the one being read never share a buffer
RING = PREFETCH_DEPTH + 2


def _fills(jobs: list, spans, size: int) -> list:
    """Jobs grouped into buffer fills of at most `size` bytes: (merged reads
    [(fd, offset, n, path, at)], [(job, at, n)]). A job's bytes are its spans', one
    after the other; spans that continue the previous one in the same file are read
    with it (a model's many small tensors then cost a few large reads, not many
    small cold ones)."""
    fills, used = [], size
    for job in jobs:
        parts = spans(job)
        n = sum(p[2] for p in parts)
        if n > size:
            raise ValueError(f"a job of {n} bytes does not fit buffers of {size}")
        if used + n > size:
            fills.append(([], []))
            used = 0
        reads, done = fills[-1]
        done.append((job, used, n))
        for fd, offset, k, path in parts:
            if reads and reads[-1][0] == fd and reads[-1][1] + reads[-1][2] == offset:
                r = reads[-1]
                reads[-1] = (fd, r[1], r[2] + k, path, r[4])
            else:
                reads.append((fd, offset, k, path, used))
            used += k
    return fills


def read_ahead(jobs: list, spans, size: int):
    """(job, its bytes: a memoryview) for each of `jobs`, in order, read a thread ahead.
    `spans(job)` lists the job's (fd, offset, n, path) byte ranges, at most `size`
    bytes in all. Bytes land in RING buffers of `size` bytes, reused: fresh buffers
    cost a page fault per 4 KiB, and pread runs at the disk's sequential speed where
    a map's faults of a cold file hold the GIL. Only reads: converting is the
    caller's, so this thread keeps the disk busy. A job's bytes are valid until the
    caller takes the next job's. Close the generator (contextlib.closing) to stop."""
    return prefetch(_read_fills(_fills(jobs, spans, size), size), PREFETCH_DEPTH)


ALIGN = 4096  # O_DIRECT's alignment of buffer, offset and length (any block size up to it)
DIRECT_FROM = 4 << 20  # a fill that is one read of at least this many bytes reads O_DIRECT


def _read_fills(fills: list, size: int):
    # page-aligned buffers (anonymous maps), ALIGN spare at each end for O_DIRECT's rounding
    ring = [memoryview(mmap.mmap(-1, size + 2 * ALIGN)) for _ in range(min(RING, len(fills)))]
    direct: dict = {}  # fd -> an O_DIRECT descriptor of its file, or None (refused)
    try:
        for i, (reads, done) in enumerate(fills):
            buf = ring[i % len(ring)]
            base = None
            if len(reads) == 1 and reads[0][2] >= DIRECT_FROM:
                base = _fill_direct(direct, reads[0], buf)
            if base is None:
                for fd, offset, n, path, at in reads:
                    read_exact(fd, buf[at:at + n], offset, path)
                base = 0
            for job, at, n in done:
                yield job, buf[base + at:base + at + n]
    finally:
        for fd in direct.values():
            if fd is not None:
                os.close(fd)


def _fill_direct(direct: dict, read: tuple, buf: memoryview):
    """One read (fd, offset, n, path, at) into buf O_DIRECT: where in buf its bytes
    start, or None where the file takes no O_DIRECT (then `direct` remembers that, and
    the caller preads). A file system that opens O_DIRECT but will not read so (EINVAL)
    is remembered the same way."""
    fd, offset, n, path, _ = read
    if fd not in direct:
        direct[fd] = _open_direct(fd)
    if direct[fd] is None:
        return None
    try:
        return _read_direct(direct[fd], buf, offset, n, path)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        os.close(direct[fd])
        direct[fd] = None
        return None


def _open_direct(fd: int):
    """A second, O_DIRECT descriptor of fd's file (opened through /proc/self/fd, so the
    same file even if its path now names another): its reads go from the disk to our
    buffer, not through the page cache and a copy out of it (a third of an import's
    CPU on 2 cores, where the import is bound by CPU). None where there is no O_DIRECT."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        d = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | flag | os.O_CLOEXEC)
    except OSError:
        return None
    a, b = os.fstat(fd), os.fstat(d)
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
        os.close(d)
        return None
    return d


def _read_direct(fd: int, buf: memoryview, offset: int, n: int, path: str) -> int:
    """Bytes offset..offset+n of the file into buf, read O_DIRECT from the aligned
    blocks around them; returns where in buf they start. EOF first is an error."""
    start = offset - offset % ALIGN
    end = -(-(offset + n) // ALIGN) * ALIGN
    need = offset + n - start
    done = 0
    while done < need:
        got = os.preadv(fd, [buf[done:end - start]], start + done)
        if got == 0:
            raise FormatError(f"{path}: file ended at byte {start + done} while reading "
                              "(did it change while qllama was reading it?)")
        done += got
    return offset - start


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
    raised in the caller). Close the generator (contextlib.closing) to stop it.
    Stopping waits on the queue's reentrant lock, not on a join, until the reader has
    left: a Ctrl-C can leave that lock held by the caller (blockwriter's
    QueuedWriter.close says how), and a reader blocked on it would never leave."""
    cond = threading.Condition(threading.RLock())
    slots: collections.deque = collections.deque()
    stopped = left = False
    end = object()

    def put(item) -> bool:
        with cond:
            while len(slots) >= depth and not stopped:
                cond.wait()
            if stopped:
                return False
            slots.append(item)
            cond.notify_all()
            return True

    def run() -> None:
        nonlocal left
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, end))
        except BaseException as e:  # handed to the consumer, raised there
            put((False, e))
        finally:
            with cond:
                left = True
                cond.notify_all()

    thread = threading.Thread(target=run, name="qllama-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            with cond:
                while not slots:
                    cond.wait()
                ok, item = slots.popleft()
                cond.notify_all()
            if not ok:
                raise item
            if item is end:
                return
            yield item
    finally:
        with cond:
            stopped = True
            cond.notify_all()
            while not left:  # at most the item being read: then its files may be closed
                cond.wait(0.1)
        thread.join()
