#!/usr/bin/env python3
"""What a block of N tokens costs against one token: the forward pass of each, the two
alternated in one process (so both see the same machine), after 8 cached positions.
This is what batched decode of N sequences needs: issue 18 asks a block of 8 on the
7B shape for at most 2.5x one token. One sequence's block runs the classifier for its
last token only, where N sequences need it for each (on the 7B, 2% of the weights).

    python tools/block_cost.py runs/bench-models/llama2-7b.q80.bin --variant avx2
    python tools/block_cost.py MODEL --tokens 8 --reps 7 --threads 2

Prints the medians (ms) of --reps passes each, their ratio, and every pass; a pass the
model's thread governor ran on fewer threads than --threads is marked with its count.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import qllama


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=8, help="tokens in the block (8)")
    ap.add_argument("--reps", type=int, default=5, help="passes of each (5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", default=None, help="kernel variant (default: the best)")
    a = ap.parse_args()
    if a.tokens < 1 or a.reps < 1 or a.threads < 1:
        ap.error("--tokens, --reps and --threads take 1 or more")
    m = qllama.load(a.model, threads=a.threads, variant=a.variant)
    V = m.config.vocab_size
    rng = np.random.default_rng(1)
    ids = lambda n: [int(i) for i in rng.integers(3, V, n)]  # noqa: E731
    cap = 8 + a.tokens + 1
    m.session(cap).feed([1] + ids(7))  # warm-up: pages in, threads up
    one, block = [], []  # (seconds, threads)
    for _ in range(a.reps):
        for n, times in ((1, one), (a.tokens, block)):
            s = m.session(cap)
            s.feed([1] + ids(7))
            toks = ids(n)
            threads = m.governor.threads(n)
            t = time.perf_counter()
            s.feed(toks)
            times.append((time.perf_counter() - t, threads))
    o = statistics.median(t for t, _ in one) * 1e3
    b = statistics.median(t for t, _ in block) * 1e3
    print(f"{m.variant}, {a.threads} threads, decode rows {m.decode_rows}: 1 token {o:.1f} ms, "
          f"{a.tokens} tokens {b:.1f} ms, ratio {b / o:.2f}")
    def passes(times):
        return " ".join(f"{t * 1e3:.0f}" + ("" if n == a.threads else f"({n} thread)")
                        for t, n in times)
    print("  1 token:  " + passes(one))
    print(f"  {a.tokens} tokens: " + passes(block))


if __name__ == "__main__":
    main()
