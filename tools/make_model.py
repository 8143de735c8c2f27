#!/usr/bin/env python3
"""Write a random-weight model of a real model's shape: a llama2.c checkpoint, or a
Hugging Face folder (--hf: config.json and safetensors shards, bf16 by default).

    python tools/make_model.py stories15M /tmp/s15.bin [--version 0|1] [--seed 0] [--force]
    python tools/make_model.py custom /tmp/m.bin --dim 64 --hidden-dim 172 --n-layers 2 ...
    python tools/make_model.py llama2-7b runs/llama2-7b-hf --hf      # 13.5 GB, 3 shards
    python tools/make_model.py llama2-7b /tmp/7b.bin --f16-exact      # fp16 values in fp32

Weights: normal, std 0.02; norm weights near 1 (qllama.synth for llama2.c files).
Streamed (a few chunks in memory) and atomic.
"""
import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from rich.console import Console
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from qllama.errors import QllamaError
from qllama.formats import hf
from qllama.formats.llama2c import Config, expected_size, layout, validate
from qllama.interop.hf_export import (
    DTYPES,
    SHARD_BYTES,
    SafetensorsWriter,
    cast_values,
    export_writes,
    write_json,
)
from qllama.io.atomic import atomic_directory
from qllama.spec import SHAPE_FIELDS as FIELDS
from qllama.synth import PRESETS, write_random_model
from qllama.threads import resolve_threads

CHUNK = 4 << 20  # values generated per task


def write_random_hf(folder: str, config: Config, seed: int = 0, kind: str = "bf16",
                    shard_bytes: int = SHARD_BYTES, force: bool = False,
                    threads: int | None = None, progress=None) -> int:
    """A Hugging Face folder of random weights in transformers' order (layer by layer),
    chunks generated on `threads` cores while earlier ones are written. Returns the
    bytes of tensor data."""
    validate(config, folder)
    st_dtype, dtype_name, size = DTYPES[kind]
    entries = sorted(layout(config), key=lambda e: (-1 if e.name == "tok_embeddings" else
                                                    config.n_layers if e.layer is None else
                                                    e.layer))
    table = [(hf.hf_name(e.name, e.layer), st_dtype, e.shape, size) for e in entries]
    jobs = []  # (tensor index, first value, count)
    for t, e in enumerate(entries):
        per = max(1, CHUNK // (e.numel // e.shape[0])) * (e.numel // e.shape[0])
        jobs += [(t, start, min(per, e.numel - start)) for start in range(0, e.numel, per)]

    def make(job):
        t, start, n = job
        rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, t, start])))
        w = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
        if len(entries[t].shape) == 1:
            w += np.float32(1.0)
        return cast_values(w, kind)

    workers = resolve_threads(threads)
    done = 0
    with atomic_directory(folder, force, export_writes) as tmp, ThreadPoolExecutor(workers) as pool:
        with SafetensorsWriter(tmp, table, shard_bytes) as out:
            window = 2 * workers  # chunks generated ahead of the writer: bounded memory
            pending = [pool.submit(make, job) for job in jobs[:window]]
            for i, (t, start, _) in enumerate(jobs):
                data = pending.pop(0).result()
                if i + window < len(jobs):
                    pending.append(pool.submit(make, jobs[i + window]))
                out.write(table[t][0], start * size, data)
                done += data.nbytes
                if progress is not None:
                    progress(done)
        write_json(os.path.join(tmp, "config.json"), hf.config_json(config, dtype_name))
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shape", choices=(*PRESETS, "custom"))
    p.add_argument("output")
    p.add_argument("--version", type=int, choices=(0, 1), default=1)
    p.add_argument("--hf", action="store_true",
                   help="write a Hugging Face folder (config.json + safetensors) instead")
    p.add_argument("--hf-dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--shard-bytes", type=int, default=SHARD_BYTES,
                   help="--hf: tensor bytes per safetensors shard")
    p.add_argument("--f16-exact", action="store_true",
                   help="llama2.c file: fp32 weights of fp16 values (an F16 GGUF then holds them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    for f in FIELDS:
        p.add_argument("--" + f.replace("_", "-"), type=int, help="custom shape (or override a preset)")
    p.add_argument("--separate-classifier", action="store_true", help="custom: unshared output")
    args = p.parse_args(argv)
    base = PRESETS["tiny"] if args.shape == "custom" else PRESETS[args.shape]
    fields = {f: getattr(args, f) if getattr(args, f) is not None else getattr(base, f) for f in FIELDS}
    shared = base.shared_classifier and not args.separate_classifier
    config = Config(1, **fields, shared_classifier=shared)
    size = (config.n_params() * DTYPES[args.hf_dtype][2] if args.hf
            else expected_size(config.as_version(args.version)))
    t0 = time.perf_counter()
    with Progress(*Progress.get_default_columns()[:3], DownloadColumn(), TransferSpeedColumn(),
                  console=Console(stderr=True), transient=True,
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(f"writing {args.shape}", total=size)
        try:
            if args.hf:
                write_random_hf(args.output, config, args.seed, args.hf_dtype, args.shard_bytes,
                                args.force, args.threads, lambda n: bar.update(task, completed=n))
                what = f"Hugging Face folder ({args.hf_dtype})"
            else:
                write_random_model(args.output, config, seed=args.seed, version=args.version,
                                   force=args.force, threads=args.threads,
                                   progress=lambda n: bar.update(task, completed=n),
                                   f16_exact=args.f16_exact)
                what = f"version {args.version}"
        except QllamaError as e:
            print(f"make_model: error: {e}", file=sys.stderr)
            return 1
    dt = time.perf_counter() - t0
    print(f"{args.output}: {args.shape} {what}, {config.n_params():,} params, "
          f"{size / 1e6:,.1f} MB in {dt:.1f} s ({size / 1e6 / dt:,.0f} MB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
