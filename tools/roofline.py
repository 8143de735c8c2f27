#!/usr/bin/env python3
"""Decode against the memory roofline, in one run: a llama2.c file's decode rate times
the bytes one token reads, against a streaming read of memory (tools/membench.c) on
the same threads, the two alternating round by round.

    python tools/roofline.py runs/bench-models/llama2-7b.q80.bin --variant avx2 --rounds 3

A token reads every tensor of the file once except the token table, of which it reads
one row (all of it when the table is the classifier too). The stream is a sum over a
buffer of min(those bytes, 2 GiB), far larger than any cache, read once just before and
once just after each decode measurement; the round's ratio is decode's bytes per
second over the mean of the two. It is what fraction of the machine's read bandwidth
decode turns into tokens; a shape whose weights fit in the caches can exceed 1.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import qllama  # noqa: E402
from qllama.formats import llama2c  # noqa: E402

import membench  # noqa: E402


def bytes_per_token(config: llama2c.Config) -> int:
    total = 0
    for e in llama2c.layout(config):
        if e.name == "tok_embeddings" and not config.shared_classifier:
            total += e.nbytes // config.vocab_size  # one row (and its scales)
        else:
            total += e.nbytes
    return total


def decode_rate(model, n: int) -> float:
    rng = np.random.default_rng(0)
    s = model.session(min(model.config.seq_len, 17 + n))
    s.feed([1] + [int(i) for i in rng.integers(3, model.config.vocab_size, 15)])
    ids = [int(i) for i in rng.integers(3, model.config.vocab_size, n)]
    t = time.perf_counter()
    for x in ids:
        s.feed([x])
    return n / (time.perf_counter() - t)


def stream_rate(buf: np.ndarray, threads: int) -> float:
    return buf.nbytes / membench.read_sum(buf, threads)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a llama2.c file (version 1 or 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", default=None, help="qllama kernel variant (default: the best)")
    ap.add_argument("--decode", type=int, default=32, help="tokens per decode measurement")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    config = llama2c.read_config(args.model)
    per_token = bytes_per_token(config)
    m = qllama.load(args.model, threads=args.threads, variant=args.variant)
    decode_rate(m, 4)  # warm-up: pages in, threads up
    buf = np.ones(min(per_token, 2 << 30) // 8, np.uint64)
    stream_rate(buf, args.threads)
    print(f"{args.model}: {per_token / 1e6:,.1f} MB read per token; qllama {m.variant}, "
          f"{args.threads} thread(s), stream of {buf.nbytes / 1e6:,.0f} MB")
    ratios = []
    for r in range(args.rounds):
        before = stream_rate(buf, args.threads)
        tok = decode_rate(m, args.decode)
        bw = (before + stream_rate(buf, args.threads)) / 2
        ratios.append(tok * per_token / bw)
        print(f"  round {r + 1}: decode {tok:.2f} tok/s = {tok * per_token / 1e9:.2f} GB/s; "
              f"stream {bw / 1e9:.2f} GB/s; ratio {ratios[-1]:.2f}")
    print(f"median ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
