"""Random-weight llama2.c checkpoints of real model shapes, for tests, demos and benchmarks.

Weights are normal with std 0.02 (norm weights 1 + 0.02 * normal), like the golden
files' random models. Every chunk of every tensor draws from its own generator,
seeded by (seed, tensor kind, layer, chunk), so a model's weights do not depend on
the file version: version 0 and version 1 files of one seed hold the same weights.
Files are written streaming (a few chunks in memory whatever the size), chunks
generated on `threads` cores (else QLLAMA_THREADS, else all: threads.resolve_threads),
atomically.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import UsageError
from .formats import llama2c
from .formats.llama2c import Config
from .formats.rope import rope_chunk_rows, rope_tables
from .io.atomic import atomic_output
from .io.blockwriter import BlockWriter
from .threads import resolve_threads

# Shapes of real llama2.c models; versions are set when writing.
PRESETS = {
    # small enough for tests and demos; vocab 512 fits ../shared/data/tok512.bin
    "tiny": Config(1, dim=64, hidden_dim=192, n_layers=2, n_heads=8, n_kv_heads=4,
                   vocab_size=512, seq_len=128, shared_classifier=True),
    "stories15M": Config(1, dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6,
                         vocab_size=32000, seq_len=256, shared_classifier=True),
    "stories110M": Config(1, dim=768, hidden_dim=2048, n_layers=12, n_heads=12, n_kv_heads=12,
                          vocab_size=32000, seq_len=1024, shared_classifier=True),
    "llama2-7b": Config(1, dim=4096, hidden_dim=11008, n_layers=32, n_heads=32, n_kv_heads=32,
                        vocab_size=32000, seq_len=2048, shared_classifier=False),
}

CHUNK_FLOATS = 4 << 20  # 16 MB of float32 per generated chunk (fixed: it is part of the seeding)
NORMS = ("attention_norm", "ffn_norm", "norm")
KIND_ID = {name: i for i, name in enumerate(llama2c.SHAPES)}


def _chunk(seed: int, name: str, layer: int | None, index: int, n: int) -> np.ndarray:
    ss = np.random.SeedSequence([seed, KIND_ID[name], 0 if layer is None else layer + 1, index])
    w = np.random.Generator(np.random.SFC64(ss)).standard_normal(n, dtype=np.float32)  # (n,)
    w *= np.float32(0.02)
    if name in NORMS:
        w += np.float32(1.0)
    return w


def random_tensor(config: Config, name: str, layer: int | None = None, seed: int = 0) -> np.ndarray:
    """One tensor exactly as write_random_model writes it (for tests of small models)."""
    shape = llama2c.SHAPES[name][1](config)
    numel = int(np.prod(shape))
    parts = [_chunk(seed, name, layer, i, min(CHUNK_FLOATS, numel - start))
             for i, start in enumerate(range(0, numel, CHUNK_FLOATS))]
    return np.concatenate(parts).reshape(shape)


def write_random_model(path, config: Config | str, seed: int = 0, version: int = 1,
                       force: bool = False, threads: int | None = None, progress=None,
                       f16_exact: bool = False) -> Config:
    """Write a random fp32 model (version 0 or 1) of `config`'s shape (or a PRESETS name).

    `progress(n_bytes)` is called with the bytes written so far. Returns the config written.
    `f16_exact`: weights rounded to fp16 values, so an F16 GGUF of the file holds the
    same weights as the file (llama-quantize's input at half the disk of an F32 one).
    """
    if isinstance(config, str):
        if config not in PRESETS:
            raise UsageError(f"unknown model shape {config!r}; known: {', '.join(PRESETS)}")
        config = PRESETS[config]
    if version not in (0, 1):
        raise UsageError(f"random models are fp32: version 0 or 1, not {version}")
    config = config.as_version(version)
    llama2c.validate(config, os.fspath(path))

    rope_rows = rope_chunk_rows(config.head_size, 4 * CHUNK_FLOATS)
    jobs = []  # (entry name, layer, chunk index, n_floats or, for rope tables, n_positions)
    for e in llama2c.layout(config):
        if e.name in ("freqs_cos", "freqs_sin"):   # chunk i: positions from i * rope_rows
            for i, start in enumerate(range(0, config.seq_len, rope_rows)):
                jobs.append((e.name, None, i, min(rope_rows, config.seq_len - start)))
            continue
        for i, start in enumerate(range(0, e.numel, CHUNK_FLOATS)):
            jobs.append((e.name, e.layer, i, min(CHUNK_FLOATS, e.numel - start)))

    def make(job):
        name, layer, i, n = job
        if name in ("freqs_cos", "freqs_sin"):
            start = i * rope_rows
            cos, sin = rope_tables(config.head_size, start + n, start)
            return cos if name == "freqs_cos" else sin
        w = _chunk(seed, name, layer, i, n)
        return w.astype(np.float16).astype(np.float32) if f16_exact else w

    workers = resolve_threads(threads)
    done = 0
    with atomic_output(os.fspath(path), force) as f, ThreadPoolExecutor(workers) as pool:
        out = BlockWriter(f.fileno())  # 2 MiB folios, as a quantized file gets
        header = llama2c.header_bytes(config)
        out.pwrite(header, 0)
        at = len(header)
        pending = []
        window = 2 * workers  # chunks generated ahead of the writer: bounded memory
        it = iter(jobs)
        for job in it:
            pending.append(pool.submit(make, job))
            if len(pending) >= window:
                break
        while pending:
            w = pending.pop(0).result()
            out.pwrite(w, at)
            at += w.nbytes
            done += w.nbytes
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(make, nxt))
            if progress is not None:
                progress(done)
        out.flush()
        written = os.fstat(f.fileno()).st_size
    assert written == llama2c.expected_size(config), (written, llama2c.expected_size(config))
    return config


def random_weights(config: Config, seed: int = 0) -> dict:
    """All tensors of a small model in memory: {(name, layer): float32 array} (tests)."""
    return {(e.name, e.layer): random_tensor(config, e.name, e.layer, seed)
            for e in llama2c.layout(config.as_version(1))}


def write_weights(path, config: Config, weights: dict, version: int | None = None,
                  force: bool = False) -> Config:
    """Write in-memory weights {(name, layer): array} as fp32 `version` (default config's).

    Shapes must match the layout; version 0's rope tables are computed when absent.
    No validation of values: tests use it to write NaN, zeros, extreme magnitudes.
    """
    config = config.as_version(config.version if version is None else version)
    tables = None
    with atomic_output(os.fspath(path), force) as f:
        f.write(llama2c.header_bytes(config))
        for e in llama2c.layout(config):
            w = weights.get((e.name, e.layer))
            if w is None and e.name in ("freqs_cos", "freqs_sin"):
                if tables is None:
                    tables = dict(zip(("freqs_cos", "freqs_sin"),
                                      rope_tables(config.head_size, config.seq_len)))
                w = tables[e.name]
            w = np.ascontiguousarray(w, dtype=np.float32)
            if w.shape != e.shape:
                raise ValueError(f"{e.name} layer {e.layer}: shape {w.shape}, layout says {e.shape}")
            f.write(w.tobytes())
    return config
