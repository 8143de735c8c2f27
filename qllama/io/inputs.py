"""The one way readers open input files (model files, config.json, indexes, shards,
tokenizers): a regular file, its size known before a byte is read, reads bounded.

A FIFO would block an open() or read() forever and a device (a symlink to /dev/zero)
has no size to validate, so both are refused by their kind before they are opened,
and again from the open descriptor (the path may have changed in between). JSON is
bounded in size and in nesting depth: the parser recurses, and a file nested 100,000
levels deep must be one line of error, not a RecursionError.
"""
from __future__ import annotations

import json
import mmap
import os
import stat

from ..errors import FormatError

JSON_LIMIT = 16 << 20  # config.json is ~1 KB, the largest real index ~100 KB
JSON_DEPTH = 64        # config.json and indexes nest 3 levels, safetensors headers 3
TOKENIZER_LIMIT = 64 << 20  # Llama 2's tokenizer.model is 0.5 MB, 256k-piece models ~4 MB

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _check_mode(path: str, mode: int, error) -> None:
    if not stat.S_ISREG(mode):
        raise error(f"{path}: is {_kind(mode)}, not a regular file")


def require_regular_file(path: str, error=FormatError) -> int:
    """Refuse a missing path, a directory, a FIFO or a device without opening it;
    returns the file's size."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    _check_mode(path, st.st_mode, error)
    return st.st_size


def open_regular(path: str, error=FormatError) -> tuple[int, int]:
    """(fd, size) of a regular file opened read-only; the caller closes fd."""
    require_regular_file(path, error)
    try:
        # O_NONBLOCK: should the path have become a FIFO since the check, open()
        # returns at once instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        _check_mode(path, st.st_mode, error)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def map_readonly(fd: int) -> mmap.mmap:
    """The whole file, mapped read-only. Pages read from disk from then on come in 2 MiB
    folios, mapped with huge pages: decode streams every weight per token, and 4 KiB
    pages cost it TLB misses (docs/performance.md). Pages already cached keep their size."""
    m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass  # a hint: kernels built without THP refuse it
    return m


class Mapped:
    """A validated model file's map (`_map`) and its bytes as a uint8 array (`buffer`),
    which tensor views keep alive."""

    def close(self) -> None:
        self.buffer = None
        m, self._map = self._map, None
        if m is None:
            return
        try:
            m.close()
        except BufferError:
            pass  # views still alive elsewhere (a session's): the map goes with the last

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_exact(fd: int, buf: memoryview, offset: int, path: str) -> None:
    """Fill `buf` from `offset` of `fd` (preadv until full; EOF is an error)."""
    done, n = 0, len(buf)
    while done < n:
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got == 0:
            raise FormatError(f"{path}: file ended at byte {offset + done} while reading "
                              "(did it change while qllama was reading it?)")
        done += got


def pread_exact(fd: int, n: int, offset: int, path: str, error=FormatError) -> bytes:
    """n bytes from `offset`; a file that ends first is an error."""
    buf = bytearray(n)
    try:
        read_exact(fd, memoryview(buf), offset, path)
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    except FormatError as e:
        raise error(str(e)) from None
    return bytes(buf)


def advise(fd: int, offset: int, n: int, advice: str) -> None:
    """posix_fadvise(fd, offset, n, os.<advice>) where the OS has it (a hint: none
    elsewhere)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, n, getattr(os, advice))


class HeadReads:
    """A block in which a file's head (a header, a GGUF file's metadata) is read
    without leaving small folios in its page cache. A plain read caches those bytes
    and, reading ahead, the pages after them in small folios, and a map's later reads
    grow theirs from those: a 110 MB model read that way first was mapped 71% in
    2 MiB pages (a GGUF file 73%), 100% when nothing had read it. Inside, fd reads
    nothing ahead; on leaving, the pages of bytes [0, end) are dropped, `end` being
    what the caller set (only whole folios within the range go, so 2 MiB ones already
    cached stay)."""

    def __init__(self, fd: int):
        self.fd, self.end = fd, 0

    def __enter__(self):
        advise(self.fd, 0, 0, "POSIX_FADV_RANDOM")
        return self

    def __exit__(self, *exc):
        if self.end:  # DONTNEED keeps a page the range ends inside
            advise(self.fd, 0, -(-self.end // mmap.PAGESIZE) * mmap.PAGESIZE,
                    "POSIX_FADV_DONTNEED")
        advise(self.fd, 0, 0, "POSIX_FADV_NORMAL")  # a map or a pass of fd reads ahead


def pread_head(fd: int, n: int, path: str, error=FormatError) -> bytes:
    """A file's first n bytes, read in HeadReads."""
    with HeadReads(fd) as head:
        head.end = n
        return pread_exact(fd, n, 0, path, error)


def read_bounded(path: str, limit: int, what: str, error=FormatError) -> bytes:
    """The whole of a regular file of at most `limit` bytes (`what` names it)."""
    fd, size = open_regular(path, error)
    try:
        if size > limit:
            raise error(f"{path}: {size:,} bytes; {what} is at most {limit:,} bytes")
        return pread_exact(fd, size, 0, path, error)
    finally:
        os.close(fd)


def parse_json(data: bytes, where: str, error=FormatError, depth: int = JSON_DEPTH):
    """JSON text (UTF-8) nested at most `depth` levels."""
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise error(f"{where}: not valid JSON (nested deeper than {depth} levels)") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: not valid JSON (not UTF-8 at byte {e.start})") from None
    except ValueError as e:
        raise error(f"{where}: not valid JSON ({' '.join(str(e).split())})") from None
    level = [value]  # breadth first, a level at a time: no recursion here either
    for _ in range(depth):
        level = [v for c in level if isinstance(c, (dict, list))
                 for v in (c.values() if isinstance(c, dict) else c)]
        if not level:
            return value
    if any(isinstance(c, (dict, list)) for c in level):
        raise error(f"{where}: not valid JSON (nested deeper than {depth} levels)")
    return value


def load_json(path: str, what: str = "a JSON file", error=FormatError, limit: int = JSON_LIMIT):
    return parse_json(read_bounded(path, limit, what, error), path, error)
