"""The safetensors layout, described once for the importer (`read_header`) and the
exporter (`header_bytes`).

A file is an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`,
then the data: offsets count from the end of the header, and the tensors tile the
data exactly (no overlap, no gap, nothing after the last).

The header is parsed here, once per file and bounded in size, rather than by the
safetensors library at every open: a hostile 100 MB header of 1.4 million empty
tensors cost the library's parser 1.7 GB, every time.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

from ..errors import FormatError
from ..io.inputs import open_regular, parse_json, pread_exact

# Real checkpoints' headers are kilobytes (a Llama-2-7B shard's is 30 KB; one entry
# is ~150 bytes, so 16 MiB would list 100,000 tensors).
HEADER_LIMIT = 16 << 20

# Bits per element of the dtypes the format defines (qllama imports F32, F16, BF16).
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
              "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
              "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple
    offset: int  # of its data from the start of the file
    nbytes: int


def _bad(path: str, why: str) -> FormatError:
    return FormatError(f"{path}: not a valid safetensors file ({why})")


def _tensor(path: str, name: str, t, data_bytes: int, base: int) -> Tensor:
    if not isinstance(t, dict):
        raise _bad(path, f"{name} is not an object")
    dtype, shape, offsets = t.get("dtype"), t.get("shape"), t.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        shown = dtype if not isinstance(dtype, str) else dtype[:20]
        raise _bad(path, f"{name} has unknown dtype {shown!r}")
    if (not isinstance(shape, list) or len(shape) > 8 or
            not all(type(d) is int and 0 <= d < 2**48 for d in shape)):
        raise _bad(path, f"{name} has shape {str(shape)[:40]}, not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2 or
            not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise _bad(path, f"{name} has data_offsets {str(offsets)[:40]}")
    numel = 1
    for d in shape:
        numel *= d
    bits = numel * DTYPE_BITS[dtype]
    begin, end = offsets
    if bits % 8 or end - begin != bits // 8:
        raise _bad(path, f"{name}: data_offsets span {end - begin} bytes, its {dtype} shape "
                         f"{shape} needs {bits / 8:g}")
    if end > data_bytes:
        raise _bad(path, f"{name} ends {end - data_bytes:,} bytes past the file's end: "
                         "truncated")
    return Tensor(name, dtype, tuple(shape), base + begin, end - begin)


def read_header(path: str) -> dict[str, Tensor]:
    """{name: Tensor} of a safetensors file, every entry checked against the file's
    size and the others (FormatError naming the file otherwise)."""
    fd, size = open_regular(path)
    try:
        if size < 8:
            raise _bad(path, f"{size} bytes, shorter than the header's length field")
        (n,) = struct.unpack("<Q", pread_exact(fd, 8, 0, path))
        if n > HEADER_LIMIT:
            raise _bad(path, f"its header is {n:,} bytes, over qllama's limit of "
                             f"{HEADER_LIMIT:,}; real checkpoints' headers are kilobytes")
        if 8 + n > size:
            raise _bad(path, f"its header of {n:,} bytes runs past the file's end "
                             f"({size:,} bytes)")
        header = parse_json(pread_exact(fd, n, 8, path), path)
    finally:
        os.close(fd)
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and
                                 all(isinstance(v, str) for v in meta.values())):
        raise _bad(path, "__metadata__ is not an object of strings")
    data_bytes = size - 8 - n
    tensors = {name: _tensor(path, name, t, data_bytes, 8 + n) for name, t in header.items()}
    end = 8 + n
    for t in sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes)):
        if t.offset != end:
            what = "overlaps the tensor before it" if t.offset < end else "leaves a gap"
            raise _bad(path, f"{t.name} {what} (data_offsets must tile the data)")
        end += t.nbytes
    if end != size:
        raise _bad(path, f"{size - end:,} bytes after the last tensor's data")
    return tensors


def header_bytes(tensors: list) -> bytes:
    """A header for [(name, dtype, shape, begin, end)], with its length field."""
    meta = {"__metadata__": {"format": "pt"}}  # transformers refuses files without it
    for name, dtype, shape, begin, end in tensors:
        meta[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text
