"""Positioned writes to an output model file, merged into 2 MiB-aligned pieces.

Linux builds a file's page cache from folios as large as each write allows (on
file systems with large folios, such as ext4 and xfs): one 2 MiB write at a
2 MiB-aligned offset becomes one 2 MiB folio, and `qllama run` then maps it with
one huge-page TLB entry instead of 512 small ones. Decode reads every weight once
per token, so on a freshly quantized file that is 3–11% of decode speed
(docs/performance.md). A model file is mostly per-layer tensors smaller than
2 MiB, written one by one; this writer holds the bytes of a 2 MiB block until the
block is complete and hands it to the kernel in one call. A write that does not
continue the previous one (scales written chunk by chunk) first flushes what is
held, so the file's bytes are exactly those of the same writes made one by one.
"""
from __future__ import annotations

import collections
import os
import threading

BLOCK = 2 << 20  # the huge (PMD) page size with 4 KiB pages: x86-64, most arm64


class BlockWriter:
    def __init__(self, fd: int, block: int = BLOCK):
        self.fd, self.block = fd, block
        self._held = bytearray()  # bytes of [self._start, self._start + len), inside one block
        self._start = 0

    def pwrite(self, data, offset: int, release=None) -> None:
        """`release()`, if given, is called once `data` is no longer needed (as
        QueuedWriter.pwrite's; here at once)."""
        try:
            self._pwrite(memoryview(data).cast("B"), offset)
        finally:
            if release is not None:
                release()

    def _pwrite(self, data: memoryview, offset: int) -> None:
        if not len(data):
            return  # writes nothing: must not flush a block being held
        if self._held and offset != self._start + len(self._held):
            self.flush()
        if not self._held:
            self._start = offset
        end = offset + len(data)
        cut = end - end % self.block  # the last block boundary at or before end
        if cut <= self._start:  # no boundary reached: keep holding
            self._held += data
            return
        head = cut - offset  # >= 0, since what is held never crosses a boundary
        _write_all(self.fd, [self._held, data[:head]], self._start)
        self._held = bytearray(data[head:])
        self._start = cut

    def flush(self) -> None:
        if self._held:
            _write_all(self.fd, [self._held], self._start)
            self._held = bytearray()


MAX_CALL = 1 << 30  # whole blocks per call: Linux writes at most 0x7ffff000 bytes a call


def _write_all(fd: int, parts: list, offset: int) -> None:
    """One pwritev of all parts (two writes would make two smaller folios),
    continued after a short write."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        call, room = [], MAX_CALL
        for v in views:
            if not room:
                break
            call.append(v[:room])
            room -= len(call[-1])
        if hasattr(os, "pwritev"):
            n = os.pwritev(fd, call, offset)
        else:
            n = os.pwrite(fd, b"".join(call), offset)
        if n <= 0:
            raise OSError(f"write of {sum(map(len, views))} bytes at {offset} wrote nothing")
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][n:]


QUEUED_CHUNKS = 2  # a converter's chunks waiting for the writer: the next two; it works on a third
QUEUE_BYTES = QUEUED_CHUNKS * (32 << 20)  # for io.chunks.CHUNK_BYTES; converters pass their own


class QueuedWriter:
    """A BlockWriter whose writes are made by a thread, so that the caller computes
    the next chunk while the kernel copies (and, past the dirty limit, throttles)
    this one. At most `max_bytes` wait in the queue (the caller blocks beyond that):
    memory stays bounded whatever the output's size. Converters pass QUEUED_CHUNKS of
    their chunks, so that their memory stays a few chunks whatever the chunk size.

    `pwrite(data, offset, release=None)`: without `release`, `data` is copied (the
    caller may reuse its buffer at once); with it, `data` is written in place and
    `release()` is called once it has been (the caller hands its buffer back to a
    pool). A failed write is raised in the caller, as is, by its next `pwrite` or by
    `flush`; the writes after it are dropped (their buffers still released).
    `flush()` returns once everything is written; `close()` stops the thread.
    """

    def __init__(self, fd: int, max_bytes: int = QUEUE_BYTES, block: int = BLOCK):
        self.blocks = BlockWriter(fd, block)
        self.max_bytes = max_bytes
        self.queued = 0  # bytes in self.items
        self.items: collections.deque = collections.deque()  # (view, offset, release) or None
        # reentrant, so close() can wait on it while a Ctrl-C left it held (close)
        self.cond = threading.Condition(threading.RLock())
        self.error: BaseException | None = None
        self.dropping = False  # set by close(): what is still queued is not written
        self.thread = threading.Thread(target=self._run, name="qllama-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.items:
                    self.cond.wait()
                item = self.items[0]
                if item is None:  # close()'s mark: taken, and close() told
                    self.items.popleft()
                    self.cond.notify_all()
                    return
            view, offset, release = item
            if self.error is None and not self.dropping:
                try:
                    if view is FLUSH:
                        self.blocks.flush()
                    else:
                        self.blocks.pwrite(view, offset)
                except BaseException as e:  # raised in the caller
                    self.error = e
            if release is not None:
                release()
            with self.cond:
                self.items.popleft()
                self.queued -= 0 if view is FLUSH else len(view)
                self.cond.notify_all()

    def _put(self, item, nbytes: int) -> None:
        with self.cond:
            # Room for this item, or an empty queue: one item larger than the bound goes.
            while self.items and self.queued + nbytes > self.max_bytes and self.error is None:
                self.cond.wait()
            self.items.append(item)
            self.queued += nbytes
            self.cond.notify_all()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def pwrite(self, data, offset: int, release=None) -> None:
        view = memoryview(data).cast("B")
        if release is None:
            view = memoryview(bytes(view))
        try:
            self._raise()
        except BaseException:
            if release is not None:
                release()
            raise
        self._put((view, offset, release), len(view))

    def flush(self) -> None:
        self._put((FLUSH, 0, None), 0)
        with self.cond:
            while self.items:
                self.cond.wait()
        self._raise()

    def close(self) -> None:
        """Stop the thread; writes still queued (after an error) are dropped.

        A Ctrl-C can land in the calling thread just after a `with self.cond` took the
        lock and before the block that would release it begins (CPython runs signal
        handlers between any two bytecodes), leaving the lock held. Joining the thread
        then waited forever on a writer that needs the lock (`qllama quantize`, Ctrl-C,
        about 1 run in 45 on a busy machine). cond.wait() releases every level this
        thread holds of the reentrant lock, so the writer can take the mark."""
        if not self.thread.is_alive():
            return
        with self.cond:
            self.dropping = True
            self.items.append(None)
            self.cond.notify_all()
            while self.items and self.thread.is_alive():
                self.cond.wait(0.1)
        self.thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


FLUSH = memoryview(b"")  # queued by flush(): the held block goes out
