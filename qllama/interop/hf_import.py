"""A Hugging Face Llama folder → a llama2.c file, version 1 (fp32) or 2 (Q8_0), streamed.

Data flow: config.json → Config (formats.hf.parse_config: refusals) → every tensor's
safetensors header checked against the llama2.c layout (name, dtype, shape) →
for each output tensor in file order, row chunks read a thread ahead from the
memory-mapped shard (the safetensors library), converted to float32 exactly (bf16
through ml_dtypes), q_proj / k_proj rows put back in Meta's order per head →
quant.pipeline.TensorWriter (fp32 copy, or the Q8_0 weight quantizer) → 2 MiB-aligned
writes (io.blockwriter) into an atomic output. So a v2 file is byte-identical to
`qllama quantize` of the v1 file.

Each chunk is read through its own `safe_open`: the shard's map is dropped after
every chunk, so the pages read do not pile up in the process's resident set (a
7B's 10 GB shard read through one map would count 10 GB). Memory stays a few chunks.

A `tokenizer.model` in the folder is written beside the output as tokenizer.model
and tokenizer.bin (llama2.c's export, byte for byte), where `qllama run` looks.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import FormatError, QllamaWarning, UsageError
from ..formats import hf, llama2c
from ..formats.llama2c import Config, Entry
from ..io.atomic import atomic_output, check_output_path
from ..io.blockwriter import BlockWriter
from ..io.chunks import CHUNK_BYTES, check_free_space, prefetch, read_exact
from ..quant.groups import choose_group_size
from ..quant.pipeline import TensorWriter, check_written, kind_stats
from ..threads import resolve_threads


@dataclass(frozen=True)
class Source:
    """Where one tensor is: its file (a shard), name, safetensors dtype and shape, and
    the byte offset of its data in the file."""

    path: str
    name: str
    dtype: str
    shape: tuple
    offset: int

    @property
    def itemsize(self) -> int:
        return 4 if self.dtype == "F32" else 2

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.itemsize


@dataclass
class ImportReport:
    src: str
    dst: str
    config: Config  # the output's
    note: str | None  # the group size's back-off, if any
    dtypes: list  # safetensors dtypes read
    in_bytes: int  # tensor bytes read from the shards
    out_bytes: int
    tokenizer_files: list = field(default_factory=list)  # written beside dst
    seconds: float = 0.0
    threads: int = 1
    kinds: dict = field(default_factory=dict)  # name -> quant.pipeline.KindStats

    @property
    def mb_per_s(self) -> float:
        return self.in_bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def _open(path: str):
    """safe_open with the library's errors (a truncated or corrupt file) as one line."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy: safetensors then returns it)
    from safetensors import SafetensorError, safe_open
    try:
        return safe_open(path, framework="numpy")
    except SafetensorError as e:
        raise FormatError(f"{path}: not a valid safetensors file ({' '.join(str(e).split())})"
                          ) from None
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror}") from None


def scan(folder: str, config: Config) -> dict:
    """{(llama2.c name, layer): Source} for every tensor of the v1 layout, after
    checking every tensor header in the folder: nothing missing, mis-shaped, of
    another dtype, or unknown (biases are named as such)."""
    wmap = hf.weight_files(folder)
    files = sorted(set(wmap.values())) if wmap is not None else [hf.SINGLE]
    found = {}  # hf name -> Source
    for file in files:
        path = os.path.join(folder, file)
        with _open(path) as f:
            offsets = hf.data_offsets(path)
            for name in f.keys():
                s = f.get_slice(name)
                found[name] = Source(path, name, s.get_dtype(), tuple(s.get_shape()),
                                     offsets[name])
    if wmap is not None:
        for name, file in wmap.items():
            if name not in found or os.path.basename(found[name].path) != file:
                raise FormatError(f"{os.path.join(folder, hf.INDEX)}: names {file} for {name}, "
                                  "which that file does not hold")
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


def _chunks(entries: list[Entry], sources: dict, config: Config, step: int):
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


def _byte_range(chunk) -> tuple[int, int]:
    e, _, s, r0, r1 = chunk
    row = s.nbytes // s.shape[0]
    return s.offset + r0 * row, (r1 - r0) * row


def _read(chunk, config: Config, out: np.ndarray) -> np.ndarray:
    """One chunk's values as float32 in llama2.c's order, in `out` (flat); returns that
    part of `out`. Widening and un-permuting are one numpy pass into a reused buffer:
    fresh buffers cost a page fault per 4 KiB."""
    e, start, s, r0, r1 = chunk
    with _open(s.path) as f:
        a = f.get_slice(s.name)[r0:r1]
    w = out[:a.size]
    src, dst = a, w.reshape(a.shape)
    if e.name in hf.PERMUTED:
        src = hf.meta_order_view(a, (r1 - r0) // config.head_size)
        dst = w.reshape(src.shape)
    if s.dtype == "BF16":
        # bf16 is the upper half of a float32: widened exactly by a shift, which, unlike
        # ml_dtypes' cast, releases the GIL (the quantizer's thread runs meanwhile).
        np.left_shift(src.view(np.uint16), 16, out=dst.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(dst, src)  # F16 → F32 is exact
    return w


def _reads(plan: list, config: Config, step: int):
    """(chunk, values) for each chunk of the plan (_read), into a ring of buffers.

    The chunk's bytes are first read with pread into a scratch buffer: that fills the
    page cache at the disk's sequential speed (1.7-2.5 GB/s here), where the faults of
    the library's map of a cold file read at 0.6-1 GB/s, holding the GIL; the library
    then copies from the cache. Consumed through prefetch(depth=2): the caller holds
    one chunk, two wait in its queue and one is being read, so a ring of four buffers
    never overwrites values in use."""
    ring = [np.empty(step, np.float32) for _ in range(4)]
    scratch = bytearray(max(_byte_range(c)[1] for c in plan))
    fds = {}
    try:
        for i, chunk in enumerate(plan):
            path = chunk[2].path
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY)
            offset, n = _byte_range(chunk)
            read_exact(fds[path], memoryview(scratch)[:n], offset, path)
            yield chunk, _read(chunk, config, ring[i % len(ring)])
    finally:
        for fd in fds.values():
            os.close(fd)


def _tokenizer_outputs(folder: str, dst: str, config: Config, force: bool) -> list:
    """[(path, bytes)] to write beside dst: tokenizer.model and its tokenizer.bin;
    files already there with these bytes are left alone, others need --force."""
    path = os.path.join(folder, "tokenizer.model")
    if not os.path.isfile(path):
        return []
    from ..tokenizer import SentencePieceTokenizer, load_tokenizer
    from ..tokenizer.llama2c import bin_bytes
    tok = load_tokenizer(path)
    if not isinstance(tok, SentencePieceTokenizer):
        raise UsageError(f"{path}: is not a SentencePiece model")
    if tok.vocab_size != config.vocab_size:
        warnings.warn(f"{path} has {tok.vocab_size} pieces but the model's vocabulary is "
                      f"{config.vocab_size}: not copied beside the output", QllamaWarning,
                      stacklevel=3)
        return []
    with open(path, "rb") as f:
        model_bytes = f.read()
    out_dir = os.path.dirname(os.path.abspath(dst))
    outputs = []
    for name, data in (("tokenizer.model", model_bytes), ("tokenizer.bin", bin_bytes(tok))):
        target = os.path.join(out_dir, name)
        if os.path.isfile(target):
            with open(target, "rb") as f:
                if f.read() == data:
                    continue
        check_output_path(target, force)
        outputs.append((target, data))
    return outputs


def import_hf(src: str, dst: str, version: int = 1, group_size: int | None = None,
              force: bool = False, threads: int | None = None, progress=None,
              chunk_bytes: int = CHUNK_BYTES) -> ImportReport:
    """Write the Hugging Face folder `src` as llama2.c `version` 1 or 2 to `dst`.

    `progress(done, total)` gets the tensor bytes read so far and in all.
    Raises QllamaError, before writing anything, on what cannot be imported."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.isdir(src):
        raise UsageError(f"{src}: not a folder (a Hugging Face model folder holds config.json "
                         "and safetensors weights)")
    threads = resolve_threads(threads)
    config = hf.read_config(src)
    note = None
    if version == 2:
        gs, note = choose_group_size(config, group_size)
        cout = config.as_version(2, gs)
    elif version == 1:
        if group_size is not None:
            raise UsageError("--group-size applies to version 2 (Q8_0) output only")
        cout = config
    else:
        raise UsageError(f"import writes llama2.c versions 1 and 2, not {version}")
    llama2c.validate(cout, dst)
    sources = scan(src, config)
    out_size = llama2c.expected_size(cout)
    check_output_path(dst, force)
    check_free_space(dst, out_size)
    tokenizer_files = _tokenizer_outputs(src, dst, config, force)
    entries = llama2c.layout(cout)
    gs = max(cout.group_size, 1)
    step = max(gs, (chunk_bytes // 4) // gs * gs)
    plan = list(_chunks(entries, sources, config, step))
    step = max((r1 - r0) * (e.numel // e.shape[0]) for e, _, _, r0, r1 in plan)
    report = ImportReport(src, dst, cout, note, sorted({s.dtype for s in sources.values()}),
                          sum(sources[(e.name, e.layer)].nbytes for e in entries), out_size,
                          [p for p, _ in tokenizer_files], threads=threads,
                          kinds=kind_stats(entries))

    def label(e: Entry) -> str:  # for q/k the element index counts llama2.c's rows
        extra = " (rows in llama2.c's order)" if e.name in hf.PERMUTED else ""
        return hf.hf_name(e.name, e.layer) + extra

    t0 = time.perf_counter()
    done = 0
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(atomic_output(dst, force))
        for path, data in tokenizer_files:  # committed before the model, dropped with it
            stack.enter_context(atomic_output(path, True)).write(data)
        out = BlockWriter(f.fileno())
        out.pwrite(llama2c.header_bytes(cout), 0)
        tensors = TensorWriter(out, cout, step, threads, report.kinds, src, label,
                               chunk_bytes=chunk_bytes)
        with contextlib.closing(prefetch(_reads(plan, config, step), depth=2)) as chunks:
            for (e, start, s, r0, r1), w in chunks:
                tensors.write(e, start, w)
                done += s.nbytes * (r1 - r0) // s.shape[0]
                if progress is not None:
                    progress(done, report.in_bytes)
        out.flush()
        check_written(f.fileno(), dst, out_size)
    report.seconds = time.perf_counter() - t0
    return report
