"""A GGUF file's container, parsed and checked with every length bounded: the header,
the metadata key/values, the tensor table and the data region. What the tensors
mean is gguf_reader's business; this module knows only the container.

Layout (little-endian; llama.cpp's gguf-py is the reference, its reader is not used
here: it trusts counts and lengths): "GGUF", uint32 version (2 or 3), uint64 tensor
count, uint64 key/value count; each key/value a string key, a uint32 value type and
the value (a string is a uint64 length and UTF-8 bytes; an array a uint32 element
type, a uint64 count and the elements, arrays of arrays allowed); each tensor a
string name, uint32 n_dims, n_dims uint64 dims (ne0, the columns, first), a uint32
type and a uint64 offset from the data region's start; the data region starts at the
next multiple of `general.alignment` (default 32).

A count or length is checked against the bytes left before anything is allocated for
it, so a count of 2**63 is one FormatError. The metadata and tensor table are read
through a bounded window (METADATA_LIMIT, MAX_STRINGS, MAX_ARRAYS): real ones are kilobytes to ~10 MB.
"""
from __future__ import annotations

import math
import struct
from typing import NamedTuple

import numpy as np
from gguf import GGMLQuantizationType as G

from ..errors import FormatError
from ..io.inputs import pread_exact
from .gguf_types import BY_GGUF

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 had 32-bit counts; llama.cpp no longer reads it either
METADATA_LIMIT = 32 << 20
MAX_STRINGS = 2 << 20  # each a Python object: 128k-token vocabularies with their merges
                       # hold ~0.4M
MAX_ARRAYS = 1 << 16   # real files hold a few, none nested
MAX_DIMS = 4
MAX_NAME = 64       # ggml's GGML_MAX_NAME, name and terminator
MAX_KEY = 65535     # the spec's bound on a key's length
MAX_NESTING = 8     # arrays of arrays; real files use none
DEFAULT_ALIGNMENT = 32
INT64_MAX = 2**63 - 1
_WINDOW = 1 << 20

STRING, ARRAY = 8, 9
# value type -> (name, numpy dtype) of the fixed-size types
SCALARS = {0: ("UINT8", "<u1"), 1: ("INT8", "<i1"), 2: ("UINT16", "<u2"), 3: ("INT16", "<i2"),
           4: ("UINT32", "<u4"), 5: ("INT32", "<i4"), 6: ("FLOAT32", "<f4"), 7: ("BOOL", "<u1"),
           10: ("UINT64", "<u8"), 11: ("INT64", "<i8"), 12: ("FLOAT64", "<f8")}
BOOL, FLOAT32 = 7, 6
_MIN_SIZE = {STRING: 8, ARRAY: 12}  # bytes of the smallest value of a variable type

F32_BYTES = 4


class TensorInfo(NamedTuple):
    name: str
    dims: tuple       # as GGUF lists them: ne0 (columns) first
    type: int         # GGUF type id (F32, or a gguf_types block type)
    offset: int       # from the start of the data region
    nbytes: int

    @property
    def shape(self) -> tuple:
        """Rows first, as numpy and llama2.c write it."""
        return tuple(reversed(self.dims))

    @property
    def type_name(self) -> str:
        return type_name(self.type)


def type_name(t: int) -> str:
    try:
        return G(t).name
    except ValueError:
        return f"unknown type {t}"


def show(value) -> str:
    """A metadata value for a one-line message: short, whatever it holds."""
    if isinstance(value, (list, np.ndarray)):
        return f"an array of {len(value):,}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def readable_types() -> str:
    return ", ".join(["F32"] + [q.gguf.name for q in BY_GGUF.values()])


class _Cursor:
    """Reads forward from `fd` through a window of the file's first `limit` bytes."""

    def __init__(self, fd: int, size: int, path: str):
        self.fd, self.size, self.path = fd, size, path
        self.end = min(size, METADATA_LIMIT)
        self.pos = 0
        self.counts = {"strings": 0, "arrays": 0}
        self._buf, self._base = b"", 0

    def left(self) -> int:
        return self.end - self.pos

    @property
    def read_end(self) -> int:
        """The file's bytes [0, read_end) have been read (the window only moves on)."""
        return self._base + len(self._buf)

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            if self.end < self.size:
                raise FormatError(f"{self.path}: {what} at byte {self.pos} needs {n:,} bytes; "
                                  f"GGUF metadata is read up to {METADATA_LIMIT:,} bytes")
            raise FormatError(f"{self.path}: truncated: {what} at byte {self.pos} needs {n:,} "
                              f"bytes, the file has {self.left():,} left")

    def window(self, n: int, what: str) -> tuple[bytes, int]:
        """The buffer and the file offset it starts at, holding [pos, pos + n)."""
        self.need(n, what)
        if self.pos < self._base or self.pos + n > self._base + len(self._buf):
            want = min(max(n, _WINDOW), self.end - self.pos)
            self._buf, self._base = pread_exact(self.fd, want, self.pos, self.path), self.pos
        return self._buf, self._base

    def take(self, n: int, what: str) -> bytes:
        buf, base = self.window(n, what)
        start = self.pos - base
        self.pos += n
        return buf[start:start + n]

    def unpack(self, fmt: str, what: str):
        s = struct.Struct(fmt)
        return s.unpack(self.take(s.size, what))[0]

    def count(self, kind: str, limit: int, what: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] > limit:
            raise FormatError(f"{self.path}: {what}: more than {limit:,} {kind} in the metadata")

    def string(self, what: str, limit: int | None = None) -> str:
        self.count("strings", MAX_STRINGS, what)
        at = self.pos
        n = self.unpack("<Q", what)
        if limit is not None and n > limit:
            raise FormatError(f"{self.path}: {what} at byte {at} is {n:,} bytes long, "
                              f"at most {limit} allowed")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: {what} at byte {at} is not UTF-8") from None


def _strings(cur: _Cursor, count: int, what: str) -> list:
    """An array's strings, read from the buffer in one loop (a vocabulary holds 100,000s:
    a call per string would be most of the time spent opening a file)."""
    cur.counts["strings"] += count
    if cur.counts["strings"] > MAX_STRINGS:
        raise FormatError(f"{cur.path}: {what}: more than {MAX_STRINGS:,} strings in the metadata")
    buf, base = cur.window(0, what)
    i = cur.pos - base
    length = struct.Struct("<Q").unpack_from
    out = []
    for _ in range(count):
        if i + 8 > len(buf):
            cur.pos = base + i
            buf, base = cur.window(8, what)
            i = 0
        n = length(buf, i)[0]
        if i + 8 + n > len(buf):
            cur.pos = base + i
            buf, base = cur.window(8 + n, what)
            i = 0
        try:
            out.append(buf[i + 8:i + 8 + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise FormatError(f"{cur.path}: {what}: the string at byte {base + i} is not "
                              "UTF-8") from None
        i += 8 + n
    cur.pos = base + i
    return out


def _value(cur: _Cursor, vtype: int, what: str, depth: int = 0):
    if vtype in SCALARS:
        dtype = SCALARS[vtype][1]
        v = np.frombuffer(cur.take(np.dtype(dtype).itemsize, what), dtype)[0]
        if vtype == BOOL:
            return _bool(cur, v, what)
        if vtype == FLOAT32:  # the shortest decimal that is this float32: 1e-5, not 9.99e-06
            return float(str(v))
        return v.item()
    if vtype == STRING:
        return cur.string(what)
    if vtype == ARRAY:
        return _array(cur, what, depth)
    raise FormatError(f"{cur.path}: {what} at byte {cur.pos - 4} has unknown value type {vtype}")


def _bool(cur: _Cursor, v, what: str) -> bool:
    if np.any(np.asarray(v) > 1):
        raise FormatError(f"{cur.path}: {what} holds a bool that is neither 0 nor 1")
    return bool(v) if np.ndim(v) == 0 else np.asarray(v, dtype=bool)


def _array(cur: _Cursor, what: str, depth: int):
    if depth >= MAX_NESTING:
        raise FormatError(f"{cur.path}: {what}: arrays nested deeper than {MAX_NESTING} levels")
    cur.count("arrays", MAX_ARRAYS, what)
    etype = cur.unpack("<I", what)
    at = cur.pos
    count = cur.unpack("<Q", what)
    if etype in SCALARS:
        dtype = SCALARS[etype][1]
        size = np.dtype(dtype).itemsize
    elif etype in _MIN_SIZE:
        size = _MIN_SIZE[etype]
    else:
        raise FormatError(f"{cur.path}: {what} at byte {at - 4} is an array of unknown value "
                          f"type {etype}")
    if count * size > cur.left():
        cur.pos = at
        cur.need(count * size, f"{what} (an array of {count:,})")
    if etype in SCALARS:
        values = np.frombuffer(cur.take(count * size, what), dtype).copy()
        return _bool(cur, values, what) if etype == BOOL else values
    if etype == STRING:
        return _strings(cur, count, what)
    return [_value(cur, etype, what, depth + 1) for _ in range(count)]


class Container(NamedTuple):
    version: int
    metadata: dict
    tensors: dict      # name -> TensorInfo, in file order
    alignment: int
    data_start: int
    read_end: int      # parsing read bytes [0, read_end) of the file


def parse(fd: int, size: int, path: str) -> Container:
    """Parse and check the whole container (nothing is mapped); FormatError names the
    file and the first problem."""
    cur = _Cursor(fd, size, path)
    if size < 4 or cur.take(4, "magic") != MAGIC:
        raise FormatError(f"{path}: not a GGUF file (no GGUF magic)")
    version = cur.unpack("<I", "version")
    if version not in VERSIONS and int.from_bytes(version.to_bytes(4, "little"), "big") in VERSIONS:
        raise FormatError(f"{path}: a big-endian GGUF file; qllama reads little-endian ones")
    if version not in VERSIONS:
        raise FormatError(f"{path}: GGUF version {version}; qllama reads versions 2 and 3")
    n_tensors = cur.unpack("<Q", "tensor count")
    n_kv = cur.unpack("<Q", "key/value count")
    # each key/value takes at least 8 + 4 bytes, each tensor 8 + 4 + 4 + 8
    cur.need(min(n_kv, INT64_MAX) * 12 + min(n_tensors, INT64_MAX) * 24,
             f"{n_kv:,} key/values and {n_tensors:,} tensors")
    metadata = {}
    for _ in range(n_kv):
        key = cur.string("metadata key", MAX_KEY)
        if key in metadata:
            raise FormatError(f"{path}: metadata key {key} appears twice")
        vtype = cur.unpack("<I", f"type of {key}")
        metadata[key] = _value(cur, vtype, f"value of {key}")
    tensors = {}
    for _ in range(n_tensors):
        info = _tensor_info(cur)
        if info.name in tensors:
            raise FormatError(f"{path}: tensor {info.name} appears twice")
        tensors[info.name] = info
    # GGUF's spec (docs/gguf.md): a multiple of 8; llama.cpp's reader: a power of two.
    # Both, so that F32 tensors are aligned views; 1 GiB bounds the padding it adds.
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (type(alignment) is not int or alignment < 8 or alignment & (alignment - 1)
            or alignment > 1 << 30):
        raise FormatError(f"{path}: general.alignment is {show(alignment)}; GGUF's is a power of "
                          "two and a multiple of 8")
    data_start = cur.pos + -cur.pos % alignment
    _check_data(path, size, tensors, alignment, data_start)
    return Container(version, metadata, tensors, alignment, data_start, cur.read_end)


def _tensor_info(cur: _Cursor) -> TensorInfo:
    path = cur.path
    name = cur.string("tensor name", MAX_NAME - 1)
    n_dims = cur.unpack("<I", f"dimension count of tensor {name}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise FormatError(f"{path}: tensor {name} has {n_dims} dimensions; GGUF allows 1 to "
                          f"{MAX_DIMS}")
    raw = cur.take(8 * n_dims, f"dimensions of tensor {name}")
    dims = tuple(int(d) for d in np.frombuffer(raw, "<u8"))
    if min(dims) < 1 or math.prod(dims) > INT64_MAX:
        raise FormatError(f"{path}: tensor {name} has dimensions {list(dims)} (each must be "
                          f"at least 1, their product at most 2**63-1)")
    ttype = cur.unpack("<I", f"type of tensor {name}")
    offset = cur.unpack("<Q", f"offset of tensor {name}")
    if ttype == G.F32:
        nbytes = F32_BYTES * math.prod(dims)
    elif ttype in BY_GGUF:
        q = BY_GGUF[ttype]
        if dims[0] % q.block:
            raise FormatError(f"{path}: tensor {name} has rows of {dims[0]} values, not whole "
                              f"{q.gguf.name} blocks of {q.block}")
        nbytes = q.row_bytes(dims[0]) * math.prod(dims[1:])
    else:
        raise FormatError(f"{path}: tensor {name} has type {type_name(ttype)}; qllama reads "
                          f"{readable_types()}")
    return TensorInfo(name, dims, ttype, offset, nbytes)


def _check_data(path: str, size: int, tensors: dict, alignment: int, data_start: int) -> None:
    if data_start > size:
        raise FormatError(f"{path}: truncated: the tensor data would start at byte "
                          f"{data_start:,}, the file has {size:,}")
    room = size - data_start
    end, last = 0, None
    for t in sorted(tensors.values(), key=lambda t: t.offset):
        if t.offset % alignment:
            raise FormatError(f"{path}: tensor {t.name} starts at data offset {t.offset:,}, "
                              f"not a multiple of the alignment {alignment}")
        if t.offset + t.nbytes > room:
            raise FormatError(f"{path}: truncated: tensor {t.name} ({t.nbytes:,} bytes at data "
                              f"offset {t.offset:,}) runs past the end of the file "
                              f"({room:,} bytes of data)")
        if t.offset < end:
            raise FormatError(f"{path}: tensors {last} and {t.name} overlap (data offsets "
                              f"{t.offset:,} < {end:,})")
        end, last = t.offset + t.nbytes, t.name
