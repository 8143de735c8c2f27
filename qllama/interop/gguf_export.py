"""A llama2.c file (version 0, 1 or 2), Hugging Face folder or GGUF file → a GGUF file
llama.cpp loads, streamed.

Data flow: the input's row source, validated (conversion.sources) → the tokenizer
(tokenizer.model or .bin; a GGUF input's own, with its spec) → metadata and tensor
table (formats.gguf: each tensor's type, llama.cpp's mixture for the k-quant files;
written by gguf.GGUFWriter) → for each tensor in llama2.c's order, chunks of whole
rows read a thread ahead as float32 (Q8_0 and GGUF types dequantized) → F32 bytes,
or blocks of the tensor's type (the C quantizers of _kernels.quantize_blocks,
llama.cpp's reference bytes, on every thread) → written at their offsets, front to
back in 2 MiB-aligned pieces (io.blockwriter), atomically.
Memory: a few chunks, whatever the model.

A version 2 input is dequantized, then requantized to GGUF's Q8_0 (blocks of 32
with fp16 scales, where llama2.c's groups have fp32 scales); the report gives, per
tensor kind, the largest change that made to a weight (and for an fp32 input, what
quantizing cost: the largest and the RMS error relative to the weights').
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from ..conversion.driver import pump
from ..conversion.report import KindStats, Report, TypeTotal, non_finite, tensor_label
from ..conversion.sources import GGUFSource, open_source, refuse_tokenizer, resolve_tokenizer
from ..errors import UsageError
from ..formats import gguf as gguf_format
from ..io.atomic import atomic_output, check_output_path, check_written
from ..io.blockwriter import QUEUED_CHUNKS, QueuedWriter
from ..io.chunks import CHUNK_BYTES, check_free_space
from ..quant.blocks import WEIGHTED
from ..quant.types import BY_GGUF
from ..threads import resolve_threads


def _metadata(config, kind: str, tok, name: str, tensors: list,
              carried: dict) -> tuple[bytes, int]:
    """Header, key-values and tensor table as gguf.GGUFWriter writes them; and the
    alignment of the data after them. (The writer wants a path; it writes these
    bytes to a scratch file, the tensor data is streamed here.)"""
    import gguf
    with tempfile.TemporaryDirectory(prefix="qllama-gguf-") as tmp:
        path = os.path.join(tmp, "meta.gguf")
        writer = gguf.GGUFWriter(path, gguf_format.ARCH)
        gguf_format.add_metadata(writer, config, kind, name, carried.get("spec"))
        gguf_format.add_vocabulary(writer, tok, carried.get("add_bos", True),
                                   carried.get("add_eos", False), carried.get("chat_template"))
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


def _note(gnames: list, planned, qtype, cols: int) -> str:
    """Why tensors `gnames` are `qtype`, not `planned`."""
    import gguf
    block = gguf.GGML_QUANT_SIZES[planned][0]
    one = len(gnames) == 1
    why = (f"{'its' if one else 'their'} rows of {cols} values are not whole {planned.name} "
           f"blocks of {block}")
    what = ", ".join(gnames)
    if qtype.name == "F16" and planned.name == "Q8_0":
        return f"{what} {'stays' if one else 'stay'} F16: {why} (as llama.cpp's converters fall back)"
    if planned.name in ("Q4_K", "Q5_K") and qtype.name == "Q8_0":
        how = ("llama-quantize would use Q5_0 or Q5_1 there, types qllama does not write; "
               "Q8_0 has the same blocks of 32 and more bits")
    else:
        how = "as llama-quantize falls back"
    return f"{what} {'is' if one else 'are'} {qtype.name}, not {planned.name}: {why} ({how})"


def _carried(reader: GGUFSource, tokenizer: str | None) -> tuple:
    """(the tokenizer, {what the output keeps}) of a GGUF input: its vocabulary, spec
    (RoPE base, norm epsilon, context length, bos/eos) and BOS/EOS flags."""
    from ..tokenizer import from_gguf
    refuse_tokenizer(reader.path, tokenizer)
    m = reader.model.metadata
    carried = {"spec": reader.spec, "chat_template": reader.spec.chat_template}
    for key in ("add_bos", "add_eos"):
        value = m.get(f"tokenizer.ggml.{key}_token")
        if type(value) is bool:
            carried[key] = value
    return from_gguf(reader.model), carried


def export_gguf(src: str, dst: str, kind: str | None = None, tokenizer: str | None = None,
                force: bool = False, progress=None, chunk_bytes: int = CHUNK_BYTES,
                threads: int | None = None, importance: dict | None = None) -> Report:
    """Write llama2.c checkpoint `src` (or a Hugging Face folder or a GGUF file: the row
    sources of conversion.sources, with their checks) as GGUF `dst` of --type `kind`
    (formats.gguf.TYPES: "f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k";
    default q8_0 for a quantized input, else f32). A GGUF input's vocabulary and spec
    are carried over (-z is refused for it). `progress(done, total)` gets the weights converted so far and in
    all, in bytes of float32. NaN and Inf weights are refused, naming the tensor.
    `importance` (quant.imatrix: {(name, layer): (cols,)}) weights the k-quants' fit
    as llama-quantize --imatrix."""
    src, dst = os.fspath(src), os.fspath(dst)
    threads = resolve_threads(threads)
    with open_source(src) as reader:
        config = reader.config
        is_gguf = isinstance(reader, GGUFSource)
        rounded = config.version == 2 or (is_gguf and reader.quantized_types())
        kind = kind or ("q8_0" if rounded else "f32")
        if kind not in gguf_format.TYPES:
            raise UsageError(f"GGUF tensors are {', '.join(gguf_format.TYPES)}, not {kind}")
        if is_gguf:
            tok_path, tok, carried = src, *_carried(reader, tokenizer)
        else:
            tok_path = resolve_tokenizer(src, tokenizer)
            if not tok_path:
                raise UsageError(f"{src}: no tokenizer.model or tokenizer.bin beside it; a GGUF "
                                 "file carries its vocabulary: pass one with -z/--tokenizer")
            from ..tokenizer import load_tokenizer
            tok, carried = load_tokenizer(tok_path, vocab_size=config.vocab_size), {}
        check_output_path(dst, force, (*reader.inputs, tok_path))

        entries = reader.weights()
        report = Report(src, dst, config.version, kind=kind, tokenizer=tok_path, threads=threads,
                        source=reader.label)
        has_output = any(e.name == "output" for e in entries)
        tensors, notes = [], {}
        for e in entries:
            planned = gguf_format.planned_type(e.name, e.layer, e.shape[-1], kind,
                                               config.n_layers, has_output)
            qtype = gguf_format.tensor_type(planned, e.shape)
            gname = gguf_format.tensor_name(e.name, e.layer)
            nbytes = gguf_format.nbytes(e.shape, qtype)
            tensors.append((gname, e.shape, qtype, nbytes))
            k = report.kinds.setdefault(
                e.name, KindStats(gguf_name=gguf_format.tensor_name(e.name, "N")))
            k.count += 1
            k.types[qtype.name] = k.types.get(qtype.name, 0) + 1
            total = report.types.setdefault(qtype.name, TypeTotal())
            total.tensors += 1
            total.weights += e.numel
            total.nbytes += nbytes
            if len(e.shape) > 1 and qtype != planned:
                names = notes.setdefault((planned, qtype, e.shape[-1]), [])
                if k.gguf_name not in names:
                    names.append(k.gguf_name)
        report.notes.extend(_note(names, *key) for key, names in notes.items())
        from ..tokenizer import SentencePieceTokenizer
        from ..tokenizer.llama2c import normaliser_lost
        if isinstance(tok, SentencePieceTokenizer):
            differ = normaliser_lost(tok, "llama.cpp (and qllama) read a llama GGUF vocabulary "
                                          "with Llama 2's settings but its add_space_prefix",
                                     kept=("add_dummy_prefix",))
            if differ:
                report.notes.append(f"{tok_path} {differ}")
        name = reader.name if is_gguf else os.path.splitext(os.path.basename(src))[0]
        meta, align = _metadata(config, kind, tok, name, tensors, carried)
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
        t0 = time.perf_counter()
        with atomic_output(dst, force, (*reader.inputs, tok_path)) as f, QueuedWriter(
                f.fileno(), QUEUED_CHUNKS * chunk_bytes) as out:
            out.pwrite(meta + bytes(_pad(len(meta), align)), 0)

            def write(job, w):
                e, r0, r1, qtype, offset, nbytes = job
                if not np.isfinite(w).all():
                    raise non_finite(src, e, r0 * (e.numel // e.shape[0]), w.reshape(-1),
                                     tensor_label)
                k = report.kinds[e.name]
                if qtype.name == "F32":
                    data = w
                else:  # and measure what quantizing cost
                    t = BY_GGUF[qtype]
                    imp = (importance or {}).get((e.name, e.layer))
                    data = t.quantize(w, threads, imp if t.name in WEIGHTED else None)
                    diff = t.dequantize(data, w.shape) - w
                    k.max_err = max(k.max_err, float(np.abs(diff).max()))
                    k.sq_err += float(np.dot(diff.reshape(-1), diff.reshape(-1)))
                k.sq += float(np.dot(w.reshape(-1), w.reshape(-1)))
                out.pwrite(data, offset + nbytes * r0 // e.shape[0])
                if r1 == e.shape[0]:
                    out.pwrite(bytes(_pad(nbytes, align)), offset + nbytes)

            pump(reader, plan, write, progress)
            out.flush()
            check_written(f.fileno(), dst, at)
        report.seconds = time.perf_counter() - t0
        return report
