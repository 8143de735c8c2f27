#!/usr/bin/env python3
"""Write a random-weight llama2.c checkpoint of a real model's shape.

    python tools/make_model.py stories15M /tmp/s15.bin [--version 0|1] [--seed 0] [--force]
    python tools/make_model.py custom /tmp/m.bin --dim 64 --hidden-dim 172 --n-layers 2 ...

Weights: normal, std 0.02; norm weights near 1 (qllama.synth). Streamed and atomic.
"""
import argparse
import sys
import time

from rich.console import Console
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from qllama.errors import QllamaError
from qllama.formats.llama2c import Config, expected_size
from qllama.synth import PRESETS, write_random_model

FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shape", choices=(*PRESETS, "custom"))
    p.add_argument("output")
    p.add_argument("--version", type=int, choices=(0, 1), default=1)
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
    size = expected_size(config.as_version(args.version))
    t0 = time.perf_counter()
    with Progress(*Progress.get_default_columns()[:3], DownloadColumn(), TransferSpeedColumn(),
                  console=Console(stderr=True), transient=True,
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(f"writing {args.shape}", total=size)
        try:
            c = write_random_model(args.output, config, seed=args.seed, version=args.version,
                                   force=args.force, threads=args.threads,
                                   progress=lambda n: bar.update(task, completed=n))
        except QllamaError as e:
            print(f"make_model: error: {e}", file=sys.stderr)
            return 1
    dt = time.perf_counter() - t0
    print(f"{args.output}: {args.shape} version {args.version}, {c.n_params():,} params, "
          f"{size / 1e6:,.1f} MB in {dt:.1f} s ({size / 1e6 / dt:,.0f} MB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
