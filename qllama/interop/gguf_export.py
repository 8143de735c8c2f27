"""A llama2.c file (version 0, 1 or 2) → a GGUF file llama.cpp loads, streamed.

Data flow: validated llama2.c header → the tokenizer (tokenizer.model or .bin) →
metadata and tensor table (formats.gguf, written by gguf.GGUFWriter) → for each
tensor in the input's file order, chunks of whole rows read a thread ahead as
float32 (interop.rows: Q8_0 dequantized) → F32 / F16 / Q8_0 bytes (gguf.quants) →
written at their offsets, front to back in 2 MiB-aligned pieces (io.blockwriter),
atomically. Memory: a few chunks, whatever the model.

A version 2 input is dequantized, then requantized to GGUF's Q8_0 (blocks of 32
with fp16 scales, where llama2.c's groups have fp32 scales); the report gives, per
tensor kind, the largest change that made to a weight.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..formats import gguf as gguf_format
from ..io.atomic import atomic_output, check_output_path
from ..io.blockwriter import QUEUED_CHUNKS, QueuedWriter
from ..io.chunks import CHUNK_BYTES, check_free_space
from ..quant.pipeline import check_written
from .rows import Llama2cReader, resolve_tokenizer


@dataclass
class KindError:
    """One tensor kind (all layers): its GGUF type and the largest |written - input|."""

    gguf_name: str
    qtype: str
    count: int = 0
    max_err: float = 0.0


@dataclass
class GGUFReport:
    src: str
    dst: str
    src_version: int
    kind: str  # --type
    tokenizer: str
    out_bytes: int
    notes: list = field(default_factory=list)
    kinds: dict = field(default_factory=dict)  # llama2.c name -> KindError, in file order
    seconds: float = 0.0


def _metadata(config, kind: str, tok, name: str, tensors: list) -> tuple[bytes, int]:
    """Header, key-values and tensor table as gguf.GGUFWriter writes them; and the
    alignment of the data after them. (The writer wants a path; it writes these
    bytes to a scratch file, the tensor data is streamed here.)"""
    import gguf
    with tempfile.TemporaryDirectory(prefix="qllama-gguf-") as tmp:
        path = os.path.join(tmp, "meta.gguf")
        writer = gguf.GGUFWriter(path, gguf_format.ARCH)
        gguf_format.add_metadata(writer, config, kind, name)
        gguf_format.add_vocabulary(writer, tok)
        for gname, shape, qtype, nbytes in tensors:
            writer.add_tensor_info(gname, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        with open(path, "rb") as f:
            return f.read(), writer.data_alignment


def _pad(n: int, align: int) -> int:
    return -n % align


def export_gguf(src: str, dst: str, kind: str | None = None, tokenizer: str | None = None,
                force: bool = False, progress=None, chunk_bytes: int = CHUNK_BYTES) -> GGUFReport:
    """Write llama2.c checkpoint `src` as GGUF `dst` with matrices of `kind` ("f32", "f16",
    "q8_0"; default q8_0 for a version 2 input, else f32). `progress(done, total)` gets
    the weights converted so far and in all, in bytes of float32."""
    import gguf

    src, dst = os.fspath(src), os.fspath(dst)
    with Llama2cReader(src) as reader:
        config = reader.config
        kind = kind or ("q8_0" if config.version == 2 else "f32")
        if kind not in gguf_format.TYPES:
            raise UsageError(f"GGUF tensors are {', '.join(gguf_format.TYPES)}, not {kind}")
        tok_path = resolve_tokenizer(src, tokenizer)
        if not tok_path:
            raise UsageError(f"{src}: no tokenizer.model or tokenizer.bin beside it; a GGUF file "
                             "carries its vocabulary: pass one with -z/--tokenizer")
        check_output_path(dst, force, (src, tok_path))
        from ..tokenizer import load_tokenizer
        tok = load_tokenizer(tok_path, vocab_size=config.vocab_size)

        entries = reader.weights()
        report = GGUFReport(src, dst, config.version, kind, tok_path, 0)
        tensors, fallback = [], {}
        for e in entries:
            qtype = gguf_format.tensor_type(e.shape, kind)
            gname = gguf_format.tensor_name(e.name, e.layer)
            tensors.append((gname, e.shape, qtype, gguf_format.nbytes(e.shape, qtype)))
            k = report.kinds.setdefault(e.name, KindError(gguf_format.tensor_name(e.name, "N"),
                                                          qtype.name))
            k.count += 1
            if qtype == gguf_format.FALLBACK and kind == "q8_0":
                fallback[e.name] = e.shape[-1]
        for name, cols in fallback.items():
            report.notes.append(
                f"{report.kinds[name].gguf_name} stays F16: its rows of {cols} values are not "
                f"whole Q8_0 blocks of {gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]}"
                " (as llama.cpp's converters fall back)")
        name = os.path.splitext(os.path.basename(src))[0]
        meta, align = _metadata(config, kind, tok, name, tensors)
        offsets, at = [], len(meta) + _pad(len(meta), align)
        for *_, nbytes in tensors:
            offsets.append(at)
            at += nbytes + _pad(nbytes, align)
        report.out_bytes = at
        check_free_space(dst, at)

        plan = []
        for e, (_, _, qtype, nbytes), offset in zip(entries, tensors, offsets):
            step = reader.row_step(e, chunk_bytes=chunk_bytes)
            for r0 in range(0, e.shape[0], step):
                plan.append((e, r0, min(e.shape[0], r0 + step), qtype, offset, nbytes))
        total = sum(e.numel for e in entries)
        done = 0
        t0 = time.perf_counter()
        with atomic_output(dst, force, (src, tok_path)) as f, QueuedWriter(
                f.fileno(), QUEUED_CHUNKS * chunk_bytes) as out:
            out.pwrite(meta + bytes(_pad(len(meta), align)), 0)
            with reader.chunks(plan) as chunks:
                for (e, r0, r1, qtype, offset, nbytes), w in chunks:
                    data = gguf.quants.quantize(w, qtype)
                    back = gguf.quants.dequantize(data, qtype).reshape(w.shape)
                    k = report.kinds[e.name]
                    k.max_err = max(k.max_err, float(np.abs(back - w).max()))
                    out.pwrite(data, offset + nbytes * r0 // e.shape[0])
                    if r1 == e.shape[0]:
                        out.pwrite(bytes(_pad(nbytes, align)), offset + nbytes)
                    done += w.size
                    if progress is not None:
                        progress(4 * done, 4 * total)
            out.flush()
            check_written(f.fileno(), dst, at)
        report.seconds = time.perf_counter() - t0
        return report
