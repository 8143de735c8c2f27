#!/usr/bin/env python3
"""Two builds of qllama (or two settings of one) on the same model files, alternating,
in one run: decode and prefill tok/s, and their ratio B / A.

    python tools/ab.py runs/bench-models/stories110M.q80.bin \\
        --a /work/base/.venv/bin/python --b .venv/bin/python --rounds 6
    python tools/ab.py M.q80.bin --a-env QLLAMA_ISA=avx2 --b-env QLLAMA_ISA=avx512vnni

Each measurement runs in a fresh child process of that build's Python (the model
loaded, one warm-up, then decode: `--decode` single-token feeds after a 16-token
prompt; prefill: one `--prefill`-token feed). A and B alternate round by round, so
both see the same machine; the ratio is the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import numpy as np
import qllama
path, threads, n_decode, n_prefill = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = qllama.load(path, threads=threads)
V = m.config.vocab_size
rng = np.random.default_rng(0)
ids = lambda n: [1] + [int(i) for i in rng.integers(3, V, n - 1)]
cap = min(m.config.seq_len, max(n_prefill, 16 + n_decode) + 1)
s = m.session(cap); s.feed(ids(8))  # warm-up: pages in, threads up
s = m.session(cap); t = time.perf_counter(); s.feed(ids(n_prefill)); pp = time.perf_counter() - t
s = m.session(cap); s.feed(ids(16)); toks = ids(n_decode + 1)[1:]
t = time.perf_counter()
for x in toks:
    s.feed([x])
tg = time.perf_counter() - t
print(json.dumps({"decode": n_decode / tg, "prefill": n_prefill / pp,
                  "variant": getattr(m, "variant", "?")}))
"""


def env_pairs(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        key, _, value = p.partition("=")
        out[key] = value
    return out


def once(python: str, env: dict, path: str, args) -> dict:
    # cwd away from any checkout: `python -c` puts the working directory on sys.path
    r = subprocess.run([python, "-c", CHILD, os.path.abspath(path), str(args.threads),
                        str(args.decode), str(args.prefill)], capture_output=True, text=True,
                       env={**os.environ, **env}, cwd=tempfile.gettempdir())
    if r.returncode:
        sys.exit(f"{python} failed: {r.stderr[-600:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--a", default=sys.executable, help="Python of build A")
    ap.add_argument("--b", default=sys.executable, help="Python of build B")
    ap.add_argument("--a-env", nargs="*", default=[], metavar="K=V")
    ap.add_argument("--b-env", nargs="*", default=[], metavar="K=V")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=256)
    args = ap.parse_args(argv)
    ea, eb = env_pairs(args.a_env), env_pairs(args.b_env)
    for path in args.models:
        a, b = [], []
        for _ in range(args.rounds):
            a.append(once(args.a, ea, path, args))
            b.append(once(args.b, eb, path, args))
        print(f"{os.path.basename(path)} ({args.threads} threads, {args.rounds} rounds; "
              f"A {a[0]['variant']}, B {b[0]['variant']})")
        for what in ("decode", "prefill"):
            ratios = [y[what] / x[what] for x, y in zip(a, b)]
            print(f"  {what:8s} A {statistics.median(x[what] for x in a):9.1f} tok/s   "
                  f"B {statistics.median(y[what] for y in b):9.1f} tok/s   "
                  f"B/A {statistics.median(ratios):.3f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
