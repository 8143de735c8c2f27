"""Where a Hugging Face folder's tensors are, and their rows in llama2.c's order.

config.json → Config (formats.hf.parse_config: refusals) → every shard's safetensors
header, parsed once (formats.safetensors), checked against the llama2.c layout
(name, dtype, shape) → chunks of whole rows (whole heads for q_proj / k_proj, whose
rows are put back in Meta's order per head). Shards are read, never mapped
(io.chunks.read_ahead): a 7B's 10 GB shard read through one map would count 10 GB
in the process's resident set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError
from ..formats import hf, llama2c, safetensors
from ..formats.llama2c import Config, Entry


@dataclass(frozen=True)
class Source:
    """Where one tensor is: its file (a shard), name, safetensors dtype and shape, and
    the byte offset of its data in the file."""

    path: str
    name: str
    dtype: str
    shape: tuple
    offset: int
    nbytes: int


# How each dtype's bytes are viewed: bf16 as its bits, widened by a shift (to_rows).
_VIEWS = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def _shards(wmap: dict | None) -> list:
    """The safetensors files of a folder: those its index names, else the single one."""
    return sorted(set(wmap.values())) if wmap is not None else [hf.SINGLE]


def input_files(folder: str) -> tuple[list, dict | None]:
    """(every file the import reads, the index's weight map or None)."""
    wmap = hf.weight_files(folder)
    names = ["config.json"] + ([hf.INDEX] if wmap is not None else []) + _shards(wmap)
    paths = [os.path.join(folder, n) for n in names]
    tokenizer = os.path.join(folder, "tokenizer.model")
    return paths + ([tokenizer] if os.path.lexists(tokenizer) else []), wmap


def scan(folder: str, config: Config, wmap: dict | None) -> dict:
    """{(llama2.c name, layer): Source} for every tensor of the v1 layout, after
    checking every tensor header in the folder (each shard's parsed once): nothing
    missing, duplicated, mis-shaped, of another dtype, or unknown (biases are named
    as such)."""
    found = {}  # hf name -> Source
    for file in _shards(wmap):
        path = os.path.join(folder, file)
        for name, t in safetensors.read_header(path).items():
            if name in found:
                raise FormatError(f"{folder}: tensor {name} is in both "
                                  f"{os.path.basename(found[name].path)} and {file}")
            found[name] = Source(path, name, t.dtype, t.shape, t.offset, t.nbytes)
    if wmap is not None:
        for name, file in wmap.items():
            if name not in found:
                raise FormatError(f"{os.path.join(folder, hf.INDEX)}: names {file} for "
                                  f"{name}, which no shard holds")
            if os.path.basename(found[name].path) != file:
                raise FormatError(f"{os.path.join(folder, hf.INDEX)}: names {file} for "
                                  f"{name}, which is in {os.path.basename(found[name].path)}")
    # before anything is made per layer: a small folder may claim 2**31 - 1 layers
    if config.n_layers * len(llama2c.PER_LAYER) > len(found):
        raise FormatError(f"{os.path.join(folder, 'config.json')}: num_hidden_layers is "
                          f"{config.n_layers}, {len(llama2c.PER_LAYER)} tensors a layer, but the "
                          f"safetensors hold {len(found)} tensors in all")
    wanted = {}
    for e in llama2c.layout(config.as_version(1)):
        wanted[hf.hf_name(e.name, e.layer)] = e
    sources = {}
    for name, e in wanted.items():
        s = found.get(name)
        if s is None:
            raise FormatError(f"{folder}: tensor {name} is missing")
        if s.shape != e.shape:
            raise FormatError(f"{s.path}: {name} has shape {list(s.shape)}, config.json implies "
                              f"{list(e.shape)}")
        if s.dtype not in hf.DTYPES:
            raise FormatError(f"{s.path}: {name} is {s.dtype}; qllama imports "
                              f"{', '.join(hf.DTYPES)} weights")
        sources[(e.name, e.layer)] = s
    for name, s in found.items():
        if name in wanted or name.endswith(hf.DERIVED_SUFFIXES):
            continue
        if name == hf.NAMES["output"] and config.shared_classifier:
            continue  # tied: transformers uses the embeddings whatever is stored here
        if name.endswith(".bias"):
            raise FormatError(f"{s.path}: {name}: llama2.c files have no biases")
        raise FormatError(f"{s.path}: unexpected tensor {name} (not part of a Llama model of "
                          "this config)")
    return sources


def plan_chunks(entries: list[Entry], sources: dict, config: Config, step: int):
    """(entry, first value, source, first row, end row) per chunk of at most `step`
    values: whole rows, and whole heads for the permuted q/k."""
    for e in entries:
        s = sources[(e.name, e.layer)]
        rows = e.shape[0]
        cols = e.numel // rows
        unit = config.head_size if e.name in hf.PERMUTED else 1
        per = max(unit, step // cols // unit * unit)
        for r0 in range(0, rows, per):
            yield e, r0 * cols, s, r0, min(rows, r0 + per)


def byte_span(chunk) -> tuple[int, int]:
    e, _, s, r0, r1 = chunk
    row = s.nbytes // s.shape[0]
    return s.offset + r0 * row, (r1 - r0) * row


def to_rows(chunk, config: Config, raw, out: np.ndarray) -> np.ndarray:
    """One chunk's values (its bytes `raw`) in llama2.c's order, in `out` (flat): as
    float32, or, for a bf16 tensor and a uint16 `out`, as bf16 bits (for the
    quantizer, which widens them itself); returns that part of `out`, or a view of
    `raw` when nothing needs moving. One numpy pass into a reused buffer: fresh
    buffers cost a page fault per 4 KiB."""
    e, start, s, r0, r1 = chunk
    cols = e.numel // e.shape[0]
    a = np.frombuffer(raw, _VIEWS[s.dtype], (r1 - r0) * cols).reshape(r1 - r0, cols)
    w = out[:a.size]
    src, dst = a, w.reshape(a.shape)
    if e.name in hf.PERMUTED:
        src = hf.meta_order_view(a, (r1 - r0) // config.head_size)
        dst = w.reshape(src.shape)
    if out.dtype == np.uint16:
        if e.name not in hf.PERMUTED:
            return a.reshape(-1)
        np.copyto(dst, src)  # reordered as bits: half the bytes of float32
    elif s.dtype == "BF16":
        # bf16 is the upper half of a float32: widened exactly by a shift.
        np.left_shift(src, 16, out=dst.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(dst, src)  # F16 → F32 is exact
    return w
