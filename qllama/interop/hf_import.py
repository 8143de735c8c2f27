"""A Hugging Face Llama folder → a llama2.c file, version 1 (fp32) or 2 (Q8_0), streamed.

Data flow: config.json → Config (formats.hf.parse_config: refusals) → every shard's
tensor headers checked against the llama2.c layout (conversion.hf_tensors) → for
each output tensor in file order, row chunks read a thread ahead with pread
(io.chunks.read_ahead), q_proj / k_proj rows put back in Meta's order per head →
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

import numpy as np

from ..conversion.hf_tensors import plan_chunks, to_rows
from ..conversion.llama2c import fill
from ..conversion.llama2c_sink import N_VALUE_BUFFERS, TensorWriter
from ..conversion.report import Report, kind_stats
from ..conversion.sources import HFSource
from ..errors import QllamaWarning, TokenizerError, UsageError
from ..formats import hf, llama2c
from ..formats.llama2c import Q80, Config, Entry
from ..io.atomic import atomic_outputs, check_output_name, check_output_path, check_written
from ..io.blockwriter import QUEUED_CHUNKS, QueuedWriter
from ..io.chunks import CHUNK_BYTES, check_free_space, read_ahead
from ..io.inputs import TOKENIZER_LIMIT, read_bounded
from ..quant.groups import choose_group_size
from ..threads import resolve_threads


def _same_bytes(path: str, data: bytes) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (stat.S_ISREG(st.st_mode) and st.st_size == len(data)
            and read_bounded(path, len(data), "a tokenizer") == data)


def _tokenizer_outputs(folder: str, dst: str, config: Config, force: bool,
                       inputs: list, notes: list) -> list:
    """[(path, bytes)] to write beside dst: tokenizer.model and its tokenizer.bin;
    files already there with these bytes are left alone, others need --force. A
    tokenizer.bin that encodes otherwise than its .model is said in `notes`."""
    path = os.path.join(folder, "tokenizer.model")
    if not os.path.lexists(path):
        return []
    from ..tokenizer import SentencePieceTokenizer, UnusableModel
    from ..tokenizer.llama2c import BIN_NORMALISER, bin_bytes, normaliser_lost
    model_bytes = read_bounded(path, TOKENIZER_LIMIT, "a tokenizer", TokenizerError)
    try:
        tok = SentencePieceTokenizer(path, model_bytes)
    except UnusableModel as e:  # the weights are still worth importing
        warnings.warn(f"{e}: not copied beside the output", QllamaWarning, stacklevel=3)
        return []
    if tok.vocab_size != config.vocab_size:
        warnings.warn(f"{path} has {tok.vocab_size} pieces but the model's vocabulary is "
                      f"{config.vocab_size}: not copied beside the output", QllamaWarning,
                      stacklevel=3)
        return []
    out_dir = os.path.dirname(os.path.abspath(dst))
    differ = normaliser_lost(tok, BIN_NORMALISER)
    if differ:
        notes.append(f"{path} {differ}")
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
    with HFSource(src) as source:  # checks every tensor header, opens the shards
        sources, inputs = source.sources, source.inputs
        out_size = llama2c.expected_size(cout)
        check_output_path(dst, force, inputs)
        check_free_space(dst, out_size)
        notes = [note] if note else []
        tokenizer_files = _tokenizer_outputs(src, dst, config, force, inputs, notes)
        entries = llama2c.layout(cout)
        gs = max(cout.group_size, 1)
        step = max(gs, (chunk_bytes // 4) // gs * gs)
        plan = list(plan_chunks(entries, sources, config, step))
        step = max((r1 - r0) * (e.numel // e.shape[0]) for e, _, _, r0, r1 in plan)
        report = Report(src, dst, config=cout, notes=notes,
                        source=source.label,
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
                    yield e, start, to_rows(chunk, config, raw, bits), None, nbytes
                else:
                    buf = pool.get()
                    yield (e, start, to_rows(chunk, config, raw, buf),
                           lambda buf=buf: pool.put(buf), nbytes)

        t0 = time.perf_counter()
        paths = [dst] + [p for p, _ in tokenizer_files]
        with atomic_outputs(paths, force, inputs) as (f, *tokenizer_outs), \
                QueuedWriter(f.fileno(), QUEUED_CHUNKS * chunk_bytes) as out:
            for tok_out, (_, data) in zip(tokenizer_outs, tokenizer_files):
                tok_out.write(data)
            tensors = TensorWriter(out, cout, step, threads, report.kinds, src, label,
                                   chunk_bytes=chunk_bytes)
            size = max(source.span(c)[2] for c in plan)
            reads = read_ahead(plan, lambda c: [source.span(c)], size)
            with contextlib.closing(reads) as raw_chunks:
                fill(out, cout, chunks(raw_chunks), tensors.write,
                     progress=None if progress is None else lambda d: progress(d, report.in_bytes),
                     chunk_bytes=chunk_bytes)
            check_written(f.fileno(), dst, out_size)
        report.seconds = time.perf_counter() - t0
        return report
