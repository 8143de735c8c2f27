"""A llama2.c file (version 0, 1 or 2) → a Hugging Face folder that
`transformers.AutoModelForCausalLM.from_pretrained` loads, streamed.

Data flow: validated llama2.c header → config.json (formats.hf's inverse of
parse_config) and the tensor table: Hugging Face names, shapes, dtype, shard and
offset of each tensor → for each tensor in the input's file order, chunks of whole
rows (whole heads for q/k) read a thread ahead as float32 (conversion.sources) → q_proj /
k_proj rows permuted into transformers' rotate-half order (formats.hf.to_hf) →
fp32, fp16 or bf16 → written at their offsets in the safetensors shards, front to
back, in 2 MiB-aligned pieces. Memory: a few chunks.

safetensors' own writers take every tensor in memory at once (27 GB for a 7B), so
the shards are written here, by the format's definition (formats.safetensors): the
header, then the tensors' bytes at their `data_offsets`. The tests read them back
with the safetensors library.

The folder appears whole or not at all (io.atomic.atomic_directory).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings

import numpy as np

from ..conversion.driver import pump
from ..conversion.report import Report, non_finite
from ..conversion.sources import Llama2cSource, resolve_tokenizer
from ..errors import QllamaWarning, UsageError
from ..formats import hf, is_gguf, safetensors
from ..io.atomic import atomic_directory, check_output_directory, check_written
from ..io.blockwriter import QUEUE_BYTES, QUEUED_CHUNKS, QueuedWriter
from ..io.chunks import CHUNK_BYTES, check_free_space

SHARD_BYTES = 5 * 10**9  # tensor bytes per shard: files of a few GB, as on the hub

# --type -> (safetensors dtype, config.json dtype name, bytes per value)
DTYPES = {"f32": ("F32", "float32", 4), "f16": ("F16", "float16", 2),
          "bf16": ("BF16", "bfloat16", 2)}

# What an export writes: an existing folder holding only these may be replaced (--force).
WRITTEN = ("config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json",
           hf.INDEX, hf.SINGLE)


def export_writes(name: str) -> bool:
    return name in WRITTEN or (name.startswith("model-") and name.endswith(".safetensors"))


def cast_values(w: np.ndarray, kind: str) -> np.ndarray:
    if kind == "f32":
        return w
    if kind == "f16":
        return w.astype(np.float16)
    import ml_dtypes
    # round to nearest even; as raw bits (a buffer cannot carry numpy's bfloat16)
    return w.astype(ml_dtypes.bfloat16).view(np.uint16)


class SafetensorsWriter:
    """The safetensors files of a folder, written tensor chunk by chunk.

    `tensors`: [(name, safetensors dtype, shape, bytes per value)] in the order they
    are written; they fill shards of at most `shard_bytes` in that order (one file,
    model.safetensors, when they fit). `write(name, at, data)` puts `data` at byte `at`
    of a tensor; `close()` checks every file is complete and writes the index. Each
    file's writer thread holds at most `queue_bytes` of unwritten data.
    """

    def __init__(self, folder: str, tensors: list, shard_bytes: int = SHARD_BYTES,
                 queue_bytes: int = QUEUE_BYTES):
        shards, current, used = [], [], 0
        for name, dtype, shape, size in tensors:
            nbytes = int(np.prod(shape)) * size
            if current and used + nbytes > shard_bytes:
                shards.append(current)
                current, used = [], 0
            current.append((name, dtype, shape, nbytes))
            used += nbytes
        shards.append(current)
        self.folder = folder
        self.files = ([hf.SINGLE] if len(shards) == 1 else
                      [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                       for i in range(len(shards))])
        self.place = {}  # tensor name -> (shard index, offset of its data in the file)
        self.sizes, self.total, heads = [], 0, []
        for i, shard in enumerate(shards):
            table, at = [], 0
            for name, dtype, shape, nbytes in shard:
                table.append((name, dtype, shape, at, at + nbytes))
                at += nbytes
            heads.append(safetensors.header_bytes(table))
            self.sizes.append(len(heads[-1]) + at)
            self.total += at
            for name, *_, begin, _ in table:
                self.place[name] = (i, len(heads[-1]) + begin)
        self.fds, self.outs = [], []
        for file, head in zip(self.files, heads):
            self.fds.append(os.open(os.path.join(folder, file),
                                    os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            self.outs.append(QueuedWriter(self.fds[-1], queue_bytes))  # written while the next is cast
            self.outs[-1].pwrite(head, 0)

    def write(self, name: str, at: int, data: np.ndarray) -> None:
        i, offset = self.place[name]
        self.outs[i].pwrite(data, offset + at)

    def close(self) -> None:
        try:
            for out, fd, file, size in zip(self.outs, self.fds, self.files, self.sizes):
                out.flush()
                check_written(fd, file, size)
        finally:
            self._close_files()
        if len(self.files) > 1:
            weight_map = {name: self.files[i] for name, (i, _) in self.place.items()}
            write_json(os.path.join(self.folder, hf.INDEX), {
                "metadata": {"total_size": self.total},
                "weight_map": dict(sorted(weight_map.items()))})

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if kind is None:
            self.close()
        else:
            self._close_files()

    def _close_files(self) -> None:
        for out in self.outs:
            out.close()  # its thread stopped (what it still held dropped) before its fd
        for fd in self.fds:
            os.close(fd)


def export_hf(src: str, dst: str, kind: str = "f32", tokenizer: str | None = None,
              force: bool = False, progress=None, shard_bytes: int = SHARD_BYTES,
              chunk_bytes: int = CHUNK_BYTES) -> Report:
    """Write llama2.c checkpoint `src` as the Hugging Face folder `dst` with weights of
    `kind` ("f32", "f16", "bf16"). `progress(done, total)` gets the weights converted so
    far and in all, in bytes of float32."""
    src, dst = os.fspath(src), os.fspath(dst)
    if kind not in DTYPES:
        raise UsageError(f"Hugging Face weights are written as {', '.join(DTYPES)}, not {kind}")
    st_dtype, dtype_name, size = DTYPES[kind]
    if is_gguf(src):  # its RoPE base, epsilon and vocabulary have no place in this writer
        raise UsageError(f"{src}: a GGUF file; --to hf reads llama2.c checkpoints")
    with Llama2cSource(src) as reader:
        config = reader.config
        report = Report(src, dst, config.version, kind=kind, source=reader.label)
        tok_path = resolve_tokenizer(src, tokenizer)
        inputs = (src, tok_path) if tok_path else (src,)
        check_output_directory(dst, force, export_writes, inputs)
        tok = None
        if tok_path:
            from ..tokenizer import SentencePieceTokenizer, load_tokenizer
            tok = load_tokenizer(tok_path, vocab_size=config.vocab_size)
            if not isinstance(tok, SentencePieceTokenizer):
                warnings.warn(f"{tok_path}: a llama2.c tokenizer.bin is not carried into the "
                              "folder (transformers' LlamaTokenizer reads tokenizer.model); pass "
                              "a tokenizer.model with -z", QllamaWarning, stacklevel=2)
                tok = None
        else:
            report.notes.append("no tokenizer.model beside the model and none given (-z): the "
                                "folder has the model only")

        entries = reader.weights()
        plan = []
        for e in entries:
            unit = config.head_size if e.name in hf.PERMUTED else 1
            step = reader.row_step(e, unit, chunk_bytes)
            for r0 in range(0, e.shape[0], step):
                plan.append((e, r0, min(e.shape[0], r0 + step)))
        report.out_bytes = sum(e.numel for e in entries) * size
        check_free_space(dst, report.out_bytes)
        t0 = time.perf_counter()
        with atomic_directory(dst, force, export_writes, inputs) as tmp:
            # in the input's order: the input is read front to back, each shard written so
            table = [(hf.hf_name(e.name, e.layer), st_dtype, e.shape, size) for e in entries]
            with SafetensorsWriter(tmp, table, shard_bytes, QUEUED_CHUNKS * chunk_bytes) as out:

                def write(job, w):
                    e, r0, r1 = job
                    if not np.isfinite(w).all():  # as every other output refuses them
                        raise non_finite(src, e, r0 * (e.numel // e.shape[0]), w.reshape(-1),
                                         doing="export")
                    if e.name in hf.PERMUTED:
                        w = hf.to_hf(w, (r1 - r0) // config.head_size)
                    out.write(hf.hf_name(e.name, e.layer), r0 * (e.numel // e.shape[0]) * size,
                              cast_values(w, kind))

                pump(reader, plan, write, progress)
            bos, eos = (tok.bos_id, tok.eos_id) if tok is not None else (1, 2)
            write_json(os.path.join(tmp, "config.json"), hf.config_json(config, dtype_name, bos, eos))
            write_json(os.path.join(tmp, "generation_config.json"),
                        {"bos_token_id": bos, "eos_token_id": eos})
            if tok is not None:
                shutil.copyfile(tok_path, os.path.join(tmp, "tokenizer.model"))
                write_json(os.path.join(tmp, "tokenizer_config.json"), {
                    "tokenizer_class": "LlamaTokenizer",
                    "bos_token": tok.piece(tok.bos_id), "eos_token": tok.piece(tok.eos_id),
                    "unk_token": tok.piece(tok.unk_id), "pad_token": None,
                    "add_bos_token": True, "add_eos_token": False, "legacy": True,
                    "model_max_length": config.seq_len})
            report.files = sorted(os.listdir(tmp))
            report.out_bytes = sum(os.path.getsize(os.path.join(tmp, n)) for n in report.files)
        report.seconds = time.perf_counter() - t0
        return report


def write_json(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
