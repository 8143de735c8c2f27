#!/usr/bin/env python3
"""Decode against the memory roofline, in one run: a llama2.c file's decode rate times
the bytes one token reads, against a streaming read of memory (tools/membench.c) on
the same threads, the two alternating round by round.

    python tools/roofline.py runs/bench-models/llama2-7b.q80.bin --variant avx2 --rounds 3

A token reads every tensor of the file once except the token table, of which it reads
one row (all of it when the table is the classifier too). The stream is a sum over a
buffer of min(those bytes, 2 GiB), far larger than any cache, read for half a second
just before and just after each decode measurement; the round's ratio is decode's
bytes per second over the mean of the two. It is what fraction of the machine's read
bandwidth decode turns into tokens; a shape whose weights fit in the caches can
exceed 1. The same is read of the model's own mapped pages (the very bytes decode
reads, the whole file), and the ratio to that stream is printed beside: on the Zen 4
guest, file pages in 2 MiB folios read 1-6% slower than fresh anonymous memory when
memory is fast.

It also says how much of the model's map is in 2 MiB pages. Linux maps a file with
the folios its page cache already holds, so a file copied or first read by another
program may stay in small pages (decode up to a quarter slower when memory is fast);
--recache drops the file's cached pages first so that the map reads them back in
2 MiB folios.

--patterns (a version 2 file) times no model: it reads the file's Q8_0 matrices in the
orders of decode.h's two kernels (membench.read_rows: rows one after another, or four
at a time), with trivial sums, against the stream, to see what the order alone costs.
"""
from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import qllama  # noqa: E402
from qllama import diagnostics  # noqa: E402
from qllama.formats import llama2c  # noqa: E402
from qllama.io.blockwriter import BLOCK  # noqa: E402
from qllama.io.inputs import advise  # noqa: E402

import membench  # noqa: E402


def bytes_per_token(config: llama2c.Config) -> int:
    total = 0
    for e in llama2c.layout(config):
        if e.name == "tok_embeddings" and not config.shared_classifier:
            total += e.nbytes // config.vocab_size  # one row (and its scales)
        else:
            total += e.nbytes
    return total


def huge_pages(buffer) -> str:
    """How much of a model's mapping is in 2 MiB pages: the rest costs decode TLB misses,
    up to a quarter of its speed when memory is fast (docs/performance.md). A file
    whose page cache holds smaller folios (copied, or read by another program first)
    keeps them until they are dropped: --recache."""
    huge, whole = diagnostics.huge_page_bytes(buffer), buffer.nbytes // BLOCK * BLOCK
    if huge is None or not whole:
        return "  weights in 2 MiB pages: not known here, or the file is smaller than one"
    share = huge / whole
    hint = "" if share > 0.9 else " (--recache for more)"
    return f"  weights in 2 MiB pages: {share:.1%} of the file's whole 2 MiB spans{hint}"


def recache(path: str) -> None:
    """Drop the file's cached pages (those no process maps) so that the map faults them
    back in as 2 MiB folios: a benchmark's file otherwise keeps whatever folios the
    last program to read or write it left."""
    fd = os.open(path, os.O_RDONLY)
    try:
        advise(fd, 0, 0, "POSIX_FADV_DONTNEED")
    finally:
        os.close(fd)


def decode_rate(model, n: int) -> float:
    rng = np.random.default_rng(0)
    s = model.session(min(model.config.seq_len, 17 + n))
    s.feed([1] + [int(i) for i in rng.integers(3, model.config.vocab_size, 15)])
    ids = [int(i) for i in rng.integers(3, model.config.vocab_size, n)]
    t = time.perf_counter()
    for x in ids:
        s.feed([x])
    return n / (time.perf_counter() - t)


def file_words(buffer) -> np.ndarray:
    """The mapped model file as 64-bit words (its whole words): the pages decode
    reads, for the stream."""
    v = np.frombuffer(buffer, np.uint8)
    return v[:v.size // 8 * 8].view(np.uint64)


def stream_rate(buf: np.ndarray, threads: int, seconds: float = 0.5) -> float:
    """Bytes per second of reads of buf over at least `seconds`: this guest's bandwidth
    moves by a third within a second, so one read (tens of ms) pairs poorly with a
    decode measurement of several seconds."""
    n, spent = 0, 0.0
    while spent < seconds or n == 0:
        spent += membench.read_sum(buf, threads)[1]
        n += 1
    return n * buf.nbytes / spent


def read_orders(path: str, threads: int, rounds: int) -> None:
    """The file's Q8_0 matrices (all but the token table) read in each kernel's order,
    against a stream of the same mapped bytes before and after, round by round."""
    config = llama2c.read_config(path)
    if config.version != 2:
        sys.exit("--patterns needs a version 2 (Q8_0) file")
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    mm.madvise(mmap.MADV_HUGEPAGE)  # as the engine maps it
    gs = config.group_size
    entries = [e for e in llama2c.layout(config)
               if e.encoding != "f32" and e.name != "tok_embeddings"]
    mats = [(np.frombuffer(mm, np.int8, e.numel, e.offset).reshape(e.shape),
             np.frombuffer(mm, np.float32, e.numel // gs, e.offset + e.numel)) for e in entries]
    nbytes = sum(e.nbytes for e in entries)  # one contiguous run of the file
    start = entries[0].offset - entries[0].offset % 8
    stream = np.frombuffer(mm, np.uint64, nbytes // 8, start)

    def rate(four: bool) -> float:
        t = sum(membench.read_rows(q, s, q.shape[1], gs, four, threads)[1] for q, s in mats)
        return nbytes / t

    rate(False)  # pages in
    print(f"{path}: {nbytes / 1e6:,.1f} MB of Q8_0 matrices, {threads} thread(s)")
    print(huge_pages(np.frombuffer(mm, np.uint8)))
    one, four = [], []
    for r in range(rounds):
        before = stream_rate(stream, threads)
        if r % 2:  # each order first in every other round
            b, a = rate(True), rate(False)
        else:
            a, b = rate(False), rate(True)
        bw = (before + stream_rate(stream, threads)) / 2
        one.append(a / bw)
        four.append(b / bw)
        print(f"  round {r + 1}: stream {bw / 1e9:.2f} GB/s; rows one at a time {a / 1e9:.2f} "
              f"({one[-1]:.2f}), four at a time {b / 1e9:.2f} ({four[-1]:.2f})")
    print(f"median ratio: one at a time {statistics.median(one):.2f}, "
          f"four at a time {statistics.median(four):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a llama2.c file (version 1 or 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", default=None, help="qllama kernel variant (default: the best)")
    ap.add_argument("--decode", type=int, default=32, help="tokens per decode measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--patterns", action="store_true",
                    help="time the kernels' read orders alone, no model (see above)")
    ap.add_argument("--recache", action="store_true",
                    help="drop the file's cached pages first, to map it in 2 MiB pages (above)")
    args = ap.parse_args()
    if args.recache:
        recache(args.model)
    if args.patterns:
        return read_orders(args.model, args.threads, args.rounds)

    config = llama2c.read_config(args.model)
    per_token = bytes_per_token(config)
    m = qllama.load(args.model, threads=args.threads, variant=args.variant)
    # warm-up: pages in, threads up, and the thread governor's first trial of one
    # thread (after a few decode calls) over; later trials are part of decode
    decode_rate(m, 4)
    decode_rate(m, 12)
    buf = np.ones(min(per_token, 2 << 30) // 8, np.uint64)
    own = file_words(m.file.buffer)
    stream_rate(buf, args.threads)
    stream_rate(own, args.threads)
    print(f"{args.model}: {per_token / 1e6:,.1f} MB read per token; qllama {m.variant}, "
          f"{args.threads} thread(s), stream of {buf.nbytes / 1e6:,.0f} MB and of the "
          f"file's own {own.nbytes / 1e6:,.0f} MB")
    print(huge_pages(m.file.buffer))
    ratios, own_ratios = [], []
    for r in range(args.rounds):
        before, own_before = stream_rate(buf, args.threads), stream_rate(own, args.threads)
        tok = decode_rate(m, args.decode)
        own_bw = (own_before + stream_rate(own, args.threads)) / 2
        bw = (before + stream_rate(buf, args.threads)) / 2
        ratios.append(tok * per_token / bw)
        own_ratios.append(tok * per_token / own_bw)
        print(f"  round {r + 1}: decode {tok:.2f} tok/s = {tok * per_token / 1e9:.2f} GB/s; "
              f"stream {bw / 1e9:.2f} GB/s, ratio {ratios[-1]:.2f}; the file's pages "
              f"{own_bw / 1e9:.2f} GB/s, ratio {own_ratios[-1]:.2f}")
    print(f"median ratio {statistics.median(ratios):.2f} "
          f"(to the file's pages {statistics.median(own_ratios):.2f})")


if __name__ == "__main__":
    main()
