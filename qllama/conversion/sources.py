"""Row sources: a model's tensors as float32 rows in llama2.c's layout order, whatever
file holds them, read a thread ahead by one mechanism (io.chunks.read_ahead).

A source has .config, .inputs (every file it reads), .weights() (its tensors as
llama2.c entries, in the order it reads them), .row_step(entry, unit, chunk_bytes)
and .chunks(plan): for each job (entry, r0, r1, ...) the rows r0..r1 as float32
((r1 - r0, cols), or (r1 - r0,) for 1-D tensors), valid until the next job's. What
differs between sources is only where a job's bytes are (_spans) and how they
become rows (_rows). Memory: a few chunks, whatever the model.
"""
from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from ..errors import FormatError, TokenizerError, UsageError
from ..formats import hf, is_gguf, llama2c
from ..formats.llama2c import F32, Config, Entry, dequantize_q80, layout, open_input
from ..io.chunks import CHUNK_BYTES, read_ahead
from ..io.inputs import open_regular
from ..tokenizer import find_tokenizer
from . import hf_tensors

FLOAT_TYPES = ("F32", "F16", "BF16")  # GGUF types whose values are the weights, unrounded


class _Source:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def chunks(self, plan):
        """(job, rows) for each job (entry, r0, r1, ...) of `plan`; a context manager
        (leaving it stops the reading thread)."""
        return contextlib.closing(self._chunks(plan))

    @staticmethod
    def _rows_per_chunk(e: Entry, unit: int, chunk_bytes: int) -> int:
        """As many rows as fill chunk_bytes of float32, a multiple of `unit`, at least one."""
        return max(unit, chunk_bytes // (4 * (e.numel // e.shape[0])) // unit * unit)

    def _chunks(self, plan):
        size = max(sum(s[2] for s in self._spans(job)) for job in plan)
        with contextlib.closing(read_ahead(plan, self._spans, size)) as reads:
            for job, raw in reads:
                e, r0, r1 = job[:3]
                w = self._rows(job, raw)
                yield job, w.reshape((r1 - r0, -1) if len(e.shape) > 1 else (r1 - r0,))


class Llama2cSource(_Source):
    """A llama2.c checkpoint (version 0, 1 or 2): Q8_0 tensors dequantized as the
    format defines (int8 · scale)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.inputs = [self.path]  # every file read
        self.fd, self.config = open_input(self.path)
        self.entries = layout(self.config)

    @property
    def label(self) -> str:
        """What was read, in a conversion's summary."""
        return f"version {self.config.version}"

    def close(self) -> None:
        os.close(self.fd)

    def weights(self) -> list[Entry]:
        """The tensors a model computes with, in file order (not v0's rope tables)."""
        return [e for e in self.entries if e.name not in ("freqs_cos", "freqs_sin")]

    def row_step(self, e: Entry, unit: int = 1, chunk_bytes: int = CHUNK_BYTES) -> int:
        """Rows per chunk: a multiple of `unit`, and of whole Q8_0 groups."""
        if e.encoding != F32:
            gs = self.config.group_size
            unit = math.lcm(unit, gs // math.gcd(e.numel // e.shape[0], gs))
        return self._rows_per_chunk(e, unit, chunk_bytes)

    def _spans(self, job) -> list:
        e, r0, r1 = job[:3]
        cols = e.numel // e.shape[0]
        n = (r1 - r0) * cols
        if e.encoding == F32:
            return [(self.fd, e.offset + 4 * r0 * cols, 4 * n, self.path)]
        gs = self.config.group_size  # the int8 values, then their scales
        return [(self.fd, e.offset + r0 * cols, n, self.path),
                (self.fd, e.scales_offset + 4 * (r0 * cols // gs), 4 * (n // gs), self.path)]

    def _rows(self, job, raw) -> np.ndarray:
        e, r0, r1 = job[:3]
        n = (r1 - r0) * (e.numel // e.shape[0])
        if e.encoding == F32:
            return np.frombuffer(raw, np.float32, n)
        return dequantize_q80(np.frombuffer(raw, np.int8, n),
                              np.frombuffer(raw, np.float32, offset=n), self.config.group_size)

    def values(self, in_entries: dict, out_entries: list, step: int):
        """(output entry, first value, float32 values) for every chunk of at most `step`
        values of each output tensor the input holds (`in_entries`: {(name, layer):
        this file's entry}, fp32), in output order: the values of a copy between
        llama2.c layouts. A context manager."""
        jobs = []
        for e in out_entries:
            ein = in_entries.get((e.name, e.layer))
            if ein is None:
                continue  # not in the input (v0's rope tables, written by the caller)
            for start in range(0, e.numel, step):
                jobs.append((e, ein.offset + 4 * start, min(step, e.numel - start), start))

        def spans(job):
            return [(self.fd, job[1], 4 * job[2], self.path)]

        def chunks():
            with contextlib.closing(read_ahead(jobs, spans, 4 * step)) as reads:
                for (e, _, n, start), raw in reads:
                    yield e, start, np.frombuffer(raw, np.float32, n)

        return contextlib.closing(chunks())


class HFSource(_Source):
    """A Hugging Face folder (conversion.hf_tensors): q/k rows back in Meta's order,
    chunks of whole heads for them. Checked as import checks (config.json and every
    tensor header) when made."""

    def __init__(self, folder: str):
        self.path = os.fspath(folder)
        self.config = hf.read_config(self.path)
        self.inputs, wmap = hf_tensors.input_files(self.path)
        self.sources = hf_tensors.scan(self.path, self.config, wmap)
        self.fds = {}
        try:
            for s in self.sources.values():
                if s.path not in self.fds:
                    self.fds[s.path] = open_regular(s.path)[0]
        except BaseException:
            self.close()
            raise

    @property
    def label(self) -> str:
        return f"Hugging Face, {'/'.join(sorted({s.dtype for s in self.sources.values()}))}"

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def weights(self) -> list[Entry]:
        return llama2c.layout(self.config)

    def row_step(self, e: Entry, unit: int = 1, chunk_bytes: int = CHUNK_BYTES) -> int:
        unit = math.lcm(unit, self.config.head_size if e.name in hf.PERMUTED else 1)
        return self._rows_per_chunk(e, unit, chunk_bytes)

    def span(self, chunk) -> tuple:
        """(fd, offset, n, path) of an hf_tensors chunk's bytes."""
        s = chunk[2]
        return (self.fds[s.path], *hf_tensors.byte_span(chunk), s.path)

    def _chunk(self, job) -> tuple:
        e, r0, r1 = job[:3]
        return e, r0 * (e.numel // e.shape[0]), self.sources[(e.name, e.layer)], r0, r1

    def _spans(self, job) -> list:
        return [self.span(self._chunk(job))]

    def _chunks(self, plan):
        self._buf = np.empty(max((r1 - r0) * (e.numel // e.shape[0]) for e, r0, r1, *_ in plan),
                             np.float32)  # converted into as the caller asks: done with it
        return super()._chunks(plan)

    def _rows(self, job, raw) -> np.ndarray:
        return hf_tensors.to_rows(self._chunk(job), self.config, raw, self._buf)


class GGUFSource(_Source):
    """A llama GGUF file (formats.gguf_reader: validated; its spec and vocabulary), its
    tensors read in llama2.c's v1 layout order and dequantized by their type
    (quant.types). q/k rows are used as stored: llama GGUF files keep Meta's
    interleaved order (gguf_reader's doc), which is llama2.c's."""

    def __init__(self, path: str):
        from ..formats.gguf_reader import GGUFModel
        self.path = os.fspath(path)
        self.inputs = [self.path]
        self.model = GGUFModel(self.path)  # parses and checks; its map is not read here
        try:
            self.fd, size = open_regular(self.path)
        except BaseException:
            self.model.close()
            raise
        if size != self.model.file_size:
            self.close()
            raise FormatError(f"{self.path}: file changed size while opening")
        s = self.spec = self.model.spec
        self.config = Config(1, s.dim, s.hidden_dim, s.n_layers, s.n_heads, s.n_kv_heads,
                             s.vocab_size, s.seq_len, s.shared_classifier)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.model.close()

    @property
    def name(self) -> str:
        """general.name, else the file's name without .gguf."""
        name = self.model.metadata.get("general.name")
        return name if type(name) is str else os.path.splitext(os.path.basename(self.path))[0]

    @property
    def label(self) -> str:
        return f"GGUF, {'/'.join(self.model.tensor_types())}"

    def quantized_types(self) -> list:
        """The input's types that are not floats (rounded already: requantizing them loses
        more than quantizing the originals)."""
        return [t for t in self.model.tensor_types() if t not in FLOAT_TYPES]

    def weights(self) -> list[Entry]:
        return layout(self.config)

    def row_step(self, e: Entry, unit: int = 1, chunk_bytes: int = CHUNK_BYTES) -> int:
        return self._rows_per_chunk(e, unit, chunk_bytes)  # a block type's rows: whole blocks

    def _spans(self, job) -> list:
        e, r0, r1 = job[:3]
        t = self.model.info(e.name, e.layer)
        row = t.nbytes // e.shape[0]
        return [(self.fd, self.model.data_start + t.offset + r0 * row, (r1 - r0) * row,
                 self.path)]

    def _rows(self, job, raw) -> np.ndarray:
        e, r0, r1 = job[:3]
        t = self.model.info(e.name, e.layer)
        if t.type_name == "F32":
            return np.frombuffer(raw, np.float32)
        from ..quant.types import BY_GGUF
        return BY_GGUF[t.type].dequantize(np.frombuffer(raw, np.uint8),
                                          (r1 - r0, e.numel // e.shape[0]))


def refuse_tokenizer(path: str, tokenizer) -> None:
    """A GGUF input carries its vocabulary: a tokenizer given beside it is refused."""
    if tokenizer is not None:
        raise UsageError(f"-z/--tokenizer: {path} is a GGUF file, which carries its vocabulary")


def refuse_quantized(source) -> None:
    """Quantizing reads unrounded weights: a GGUF input of another type is refused (as
    llama-quantize does without --allow-requantize)."""
    types = source.quantized_types() if isinstance(source, GGUFSource) else []
    if types:
        raise UsageError(f"{source.path}: already quantized ({', '.join(types)}); quantize "
                         f"reads {', '.join(FLOAT_TYPES)} GGUF files")


def open_source(path: str):
    """The row source of a Hugging Face folder, a GGUF file or a llama2.c file."""
    if os.path.isdir(path):
        return HFSource(path)
    if is_gguf(path):
        return GGUFSource(path)
    return Llama2cSource(path)


def resolve_tokenizer(src: str, tokenizer: str | None) -> str:
    """The given tokenizer, else one beside the model (not the working directory's: a
    file written with a tokenizer in it must not take a stranger's), else ""."""
    if tokenizer is not None:
        return os.fspath(tokenizer)
    try:
        return find_tokenizer(src, working_directory=False)
    except TokenizerError:
        return ""
