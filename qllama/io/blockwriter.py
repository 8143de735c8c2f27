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

import os

BLOCK = 2 << 20  # the huge (PMD) page size with 4 KiB pages: x86-64, most arm64


class BlockWriter:
    def __init__(self, fd: int, block: int = BLOCK):
        self.fd, self.block = fd, block
        self._held = bytearray()  # bytes of [self._start, self._start + len), inside one block
        self._start = 0

    def pwrite(self, data, offset: int) -> None:
        data = memoryview(data).cast("B")
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
