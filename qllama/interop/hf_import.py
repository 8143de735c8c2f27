"""A Hugging Face Llama folder → a llama2.c file, version 1 (fp32) or 2 (Q8_0), streamed.

Data flow: config.json → Config (formats.hf.parse_config: refusals) → every shard's
safetensors header, parsed once (formats.safetensors), checked against the llama2.c
layout (name, dtype, shape) → for each output tensor in file order, row chunks read
a thread ahead with pread, q_proj / k_proj rows put back in Meta's order per head →
conversion.llama2c_sink.TensorWriter (fp32 copy, converted exactly; or the Q8_0 weight
quantizer on every core, which widens bf16 in its own pass) → 2 MiB-aligned writes
by a writer thread (io.blockwriter.QueuedWriter) into an atomic output. So
a v2 file is byte-identical to `qllama quantize` of the v1 file. Shards are read,
never mapped, so the pages read do not pile up in the process's resident set (a
7B's 10 GB shard read through one map would count 10 GB): memory stays a few chunks.

A `tokenizer.model` in the folder is written beside the output as tokenizer.model
and tokenizer.bin (llama2.c's export, byte for byte), where `qllama run` looks; the
three files appear together or not at all. No output may be one of the inputs.
"""
from __future__ import annotations

import contextlib
import os
import queue
import stat
import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..conversion.llama2c import fill
from ..conversion.llama2c_sink import N_VALUE_BUFFERS, TensorWriter
from ..conversion.report import Report, kind_stats
from ..errors import FormatError, QllamaWarning, TokenizerError, UsageError
from ..formats import hf, llama2c, safetensors
from ..formats.llama2c import Q80, Config, Entry
from ..io.atomic import atomic_outputs, check_output_name, check_output_path, check_written
from ..io.blockwriter import QUEUED_CHUNKS, QueuedWriter
from ..io.chunks import CHUNK_BYTES, check_free_space, prefetch
from ..io.inputs import TOKENIZER_LIMIT, open_regular, read_bounded, read_exact
from ..quant.groups import choose_group_size
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
    nbytes: int


# How each dtype's bytes are viewed: bf16 as its bits, widened by a shift (_read).
_VIEWS = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def input_files(folder: str) -> tuple[list, dict | None]:
    """(every file the import reads, the index's weight map or None)."""
    wmap = hf.weight_files(folder)
    shards = sorted(set(wmap.values())) if wmap is not None else [hf.SINGLE]
    names = ["config.json"] + ([hf.INDEX] if wmap is not None else []) + shards
    paths = [os.path.join(folder, n) for n in names]
    tokenizer = os.path.join(folder, "tokenizer.model")
    return paths + ([tokenizer] if os.path.lexists(tokenizer) else []), wmap


def scan(folder: str, config: Config, wmap: dict | None) -> dict:
    """{(llama2.c name, layer): Source} for every tensor of the v1 layout, after
    checking every tensor header in the folder (each shard's parsed once): nothing
    missing, duplicated, mis-shaped, of another dtype, or unknown (biases are named
    as such)."""
    files = sorted(set(wmap.values())) if wmap is not None else [hf.SINGLE]
    found = {}  # hf name -> Source
    for file in files:
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


def _read(chunk, config: Config, raw, out: np.ndarray) -> np.ndarray:
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


def _reads(plan: list, step: int):
    """(chunk, its bytes) for each chunk of the plan, read with pread into a ring of
    buffers (at the disk's sequential speed, where the faults of a map of a cold file
    read at 0.6-1 GB/s, holding the GIL). Only reads: the conversion (_read) is the
    caller's, so that this thread keeps the disk busy. Consumed through
    prefetch(depth=2): the caller holds one chunk, two wait in its queue and one is
    being read, so a ring of four buffers never overwrites bytes in use."""
    ring = [bytearray(max(_byte_range(c)[1] for c in plan)) for _ in range(4)]
    fds = {}
    try:
        for i, chunk in enumerate(plan):
            path = chunk[2].path
            if path not in fds:
                fds[path] = open_regular(path)[0]
            offset, n = _byte_range(chunk)
            raw = memoryview(ring[i % len(ring)])[:n]
            read_exact(fds[path], raw, offset, path)
            yield chunk, raw
    finally:
        for fd in fds.values():
            os.close(fd)


class HFReader:
    """A Hugging Face folder read as interop.rows.Llama2cReader reads a llama2.c file,
    for the GGUF writer: the llama2.c layout's tensors (q/k rows back in Meta's
    order) in chunks of whole rows (whole heads for q/k) as float32, read a thread
    ahead with pread. Checked as import checks (config.json and every tensor header)
    when made; `inputs` are every file it reads."""

    def __init__(self, folder: str):
        self.path = os.fspath(folder)
        self.config = hf.read_config(self.path)
        self.inputs, wmap = input_files(self.path)
        self.sources = scan(self.path, self.config, wmap)

    def close(self) -> None:
        pass  # the shards are opened chunk by chunk (_reads)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def weights(self) -> list[Entry]:
        return llama2c.layout(self.config)

    def row_step(self, e: Entry, chunk_bytes: int = CHUNK_BYTES) -> int:
        cols = e.numel // e.shape[0]
        unit = self.config.head_size if e.name in hf.PERMUTED else 1
        return max(unit, chunk_bytes // (4 * cols) // unit * unit)

    def chunks(self, plan):
        """(job, rows (r1 - r0, cols) float32) for each job (entry, r0, r1, ...); a
        context manager (leaving it stops the reading thread)."""
        return contextlib.closing(self._chunks(plan))

    def _chunks(self, plan):
        reads = [(e, r0 * (e.numel // e.shape[0]), self.sources[(e.name, e.layer)], r0, r1)
                 for e, r0, r1, *_ in plan]
        step = max((r1 - r0) * (e.numel // e.shape[0]) for e, _, _, r0, r1 in reads)
        buf = np.empty(step, np.float32)  # converted into as the caller asks: done with it
        with contextlib.closing(prefetch(_reads(reads, step), depth=2)) as chunks:
            for job, (chunk, raw) in zip(plan, chunks):
                e, r0, r1 = job[:3]
                w = _read(chunk, self.config, raw, buf)
                yield job, w.reshape((r1 - r0, -1) if len(e.shape) > 1 else (r1 - r0,))


def _same_bytes(path: str, data: bytes) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (stat.S_ISREG(st.st_mode) and st.st_size == len(data)
            and read_bounded(path, len(data), "a tokenizer") == data)


def _tokenizer_outputs(folder: str, dst: str, config: Config, force: bool,
                       inputs: list) -> list:
    """[(path, bytes)] to write beside dst: tokenizer.model and its tokenizer.bin;
    files already there with these bytes are left alone, others need --force."""
    path = os.path.join(folder, "tokenizer.model")
    if not os.path.lexists(path):
        return []
    from ..tokenizer import SentencePieceTokenizer
    from ..tokenizer.llama2c import bin_bytes
    model_bytes = read_bounded(path, TOKENIZER_LIMIT, "a tokenizer", TokenizerError)
    tok = SentencePieceTokenizer(path, model_bytes)
    if tok.vocab_size != config.vocab_size:
        warnings.warn(f"{path} has {tok.vocab_size} pieces but the model's vocabulary is "
                      f"{config.vocab_size}: not copied beside the output", QllamaWarning,
                      stacklevel=3)
        return []
    out_dir = os.path.dirname(os.path.abspath(dst))
    outputs = []
    for name, data in (("tokenizer.model", model_bytes), ("tokenizer.bin", bin_bytes(tok))):
        target = os.path.join(out_dir, name)
        if _same_bytes(target, data):
            continue
        check_output_path(target, force, inputs)
        outputs.append((target, data))
    return outputs


def import_hf(src: str, dst: str, version: int = 1, group_size: int | None = None,
              force: bool = False, threads: int | None = None, progress=None,
              chunk_bytes: int = CHUNK_BYTES) -> Report:
    """Write the Hugging Face folder `src` as llama2.c `version` 1 or 2 to `dst`.

    `progress(done, total)` gets the tensor bytes read so far and in all.
    Raises QllamaError, before writing anything, on what cannot be imported."""
    src, dst = os.fspath(src), os.fspath(dst)
    check_output_name(dst)  # the rest of the rule once the inputs are known
    if not os.path.isdir(src):
        raise UsageError(f"{src}: not a folder (a Hugging Face model folder holds config.json "
                         "and safetensors weights)")
    threads = resolve_threads(threads)
    config = hf.read_config(src)
    inputs, wmap = input_files(src)
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
    sources = scan(src, config, wmap)
    out_size = llama2c.expected_size(cout)
    check_output_path(dst, force, inputs)
    check_free_space(dst, out_size)
    tokenizer_files = _tokenizer_outputs(src, dst, config, force, inputs)
    entries = llama2c.layout(cout)
    gs = max(cout.group_size, 1)
    step = max(gs, (chunk_bytes // 4) // gs * gs)
    plan = list(_chunks(entries, sources, config, step))
    step = max((r1 - r0) * (e.numel // e.shape[0]) for e, _, _, r0, r1 in plan)
    report = Report(src, dst, config=cout, notes=[note] if note else [],
                    dtypes=sorted({s.dtype for s in sources.values()}),
                    in_bytes=sum(sources[(e.name, e.layer)].nbytes for e in entries),
                    out_bytes=out_size, files=[p for p, _ in tokenizer_files], threads=threads,
                    kinds=kind_stats(entries))

    def label(e: Entry) -> str:  # for q/k the element index counts llama2.c's rows
        extra = " (rows in llama2.c's order)" if e.name in hf.PERMUTED else ""
        return hf.hf_name(e.name, e.layer) + extra

    # (step,) float32 chunks: fp32 output is written from them, no copy, so a few wait
    # in the writer's queue (pages are touched only where used: v1 output, norms).
    pool: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(N_VALUE_BUFFERS):
        pool.put(np.empty(step, np.float32))
    bits = np.empty(step, np.uint16)  # (step,) one bf16 chunk reordered, for the quantizer

    def chunks(raw_chunks):
        """fill()'s chunks: bf16 for the quantizer as bits (it widens them itself), else
        float32 in a pooled buffer, handed back once written."""
        for chunk, raw in raw_chunks:
            e, start, s, r0, r1 = chunk
            nbytes = s.nbytes * (r1 - r0) // s.shape[0]
            if s.dtype == "BF16" and e.encoding == Q80:
                yield e, start, _read(chunk, config, raw, bits), None, nbytes
            else:
                buf = pool.get()
                yield (e, start, _read(chunk, config, raw, buf),
                       lambda buf=buf: pool.put(buf), nbytes)

    t0 = time.perf_counter()
    paths = [dst] + [p for p, _ in tokenizer_files]
    with atomic_outputs(paths, force, inputs) as (f, *tokenizer_outs), \
            QueuedWriter(f.fileno(), QUEUED_CHUNKS * chunk_bytes) as out:
        for tok_out, (_, data) in zip(tokenizer_outs, tokenizer_files):
            tok_out.write(data)
        tensors = TensorWriter(out, cout, step, threads, report.kinds, src, label,
                               chunk_bytes=chunk_bytes)
        with contextlib.closing(prefetch(_reads(plan, step), depth=2)) as raw_chunks:
            fill(out, cout, chunks(raw_chunks), tensors.write,
                 progress=None if progress is None else lambda d: progress(d, report.in_bytes),
                 chunk_bytes=chunk_bytes)
        check_written(f.fileno(), dst, out_size)
    report.seconds = time.perf_counter() - t0
    return report
