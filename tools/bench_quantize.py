#!/usr/bin/env python3
"""Benchmark `qllama quantize`: throughput and peak RSS against plain read speed.

    python tools/bench_quantize.py stories15M stories110M [--dir /work/tmp] [--keep]
    python tools/bench_quantize.py --file model.bin [--file other.bin]
    python tools/bench_quantize.py llama2-7b --dir /work/bench     # ~27 GB + 7 GB of disk

For each input it measures, in the same run: (1) sequential read speed of the
input (readinto a reused 64 MB buffer, the whole file), (2) `python -m
qllama quantize` in a subprocess under /usr/bin/time -v (peak RSS; else
getrusage of children), and prints MB/s of input, peak RSS and the ratio of
quantize speed to read speed, and (3) quantize's I/O floor: the input read while
as many bytes as the output are written and fsync'd, no computation. As root it
drops the page cache before each measurement (cold: all read from disk);
otherwise they are measured warm or as the cache happens to be, and the table
says so. --against DIR also quantizes with the qllama tree at DIR (a checkout with
its extensions built), alternating with this one for --rounds rounds: on a shared
machine only measurements of one run, interleaved, compare.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from qllama.formats.llama2c import read_config
from qllama.synth import PRESETS, write_random_model

READ_BUF = 64 << 20


def drop_caches() -> bool:
    """Drop the page cache (root only); True if done."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def read_speed(path: str, cold: bool) -> tuple[float, bool]:
    """MB/s reading the whole file sequentially with readinto into one reused buffer."""
    dropped = drop_caches() if cold else False
    buf = bytearray(READ_BUF)
    view = memoryview(buf)
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(view)
            if not k:
                break
            n += k
    return n / 1e6 / (time.perf_counter() - t0), dropped


def io_floor(paths: list[str], out_bytes: int, scratch: str, cold: bool) -> float:
    """MB/s of input when only a converter's I/O is done: `paths` read whole (one
    thread) while `out_bytes` are written and fsync'd (another): both share the disk.
    The input is read as qllama's converters read it (io.chunks.read_ahead): a thread
    ahead, O_DIRECT where the file system takes it."""
    import contextlib
    import threading

    from qllama.io.chunks import read_ahead
    if cold:
        drop_caches()

    def write() -> None:
        block = bytes(2 << 20)
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for at in range(0, out_bytes, len(block)):
                os.pwrite(fd, block[:out_bytes - at], at)
            os.fsync(fd)
        finally:
            os.close(fd)

    writer = threading.Thread(target=write)
    n = 0
    t0 = time.perf_counter()
    writer.start()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            jobs = [(fd, at, min(READ_BUF, size - at), path) for at in range(0, size, READ_BUF)]
            chunks = read_ahead(jobs, lambda job: [job], READ_BUF)  # a job is its one span
            with contextlib.closing(chunks):
                for _, view in chunks:
                    n += len(view)
        finally:
            os.close(fd)
    writer.join()
    os.unlink(scratch)
    return n / 1e6 / (time.perf_counter() - t0)


def run_quantize(src: str, dst: str, threads: int | None, cold: bool,
                 tree: str | None = None) -> dict:
    dropped = drop_caches() if cold else False
    env = dict(os.environ, COLUMNS="250")  # rich: keep the summary on one line
    cwd = None
    if tree:  # `python -m` puts the working directory first on sys.path: run from the tree
        env["PYTHONPATH"] = cwd = os.path.abspath(tree)
        src, dst = os.path.abspath(src), os.path.abspath(dst)
    # Load the interpreter, numpy, rich and qllama back into the cache: the run
    # should time quantizing, not a cold `import numpy`.
    subprocess.run([sys.executable, "-c", "import qllama.conversion.llama2c, "
                    "qllama._kernels.quantize_weights, qllama.cli, rich.console, rich.table, "
                    "rich.progress"], check=True, env=env, cwd=cwd)
    cmd = [sys.executable, "-m", "qllama", "quantize", src, dst, "--force"]
    if threads:
        cmd += ["--threads", str(threads)]
    timer = shutil.which("time") and os.path.exists("/usr/bin/time")
    if timer:
        cmd = ["/usr/bin/time", "-v"] + cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"quantize failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    rss_kb = None
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if m:
        rss_kb = int(m.group(1))
    else:
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rss_kb = after if after > before else None  # max over children so far
    inner = re.search(r"in\s+([\d.]+)\s+s,\s+([\d,]+)\s+MB/s", p.stdout)
    return {"wall": wall, "rss_mb": rss_kb / 1024 if rss_kb else float("nan"),
            "inner_s": float(inner.group(1)) if inner else float("nan"), "dropped": dropped,
            "rss_source": "/usr/bin/time -v" if m else "getrusage(children)"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shapes", nargs="*", help=f"model shapes to generate: {', '.join(PRESETS)}")
    p.add_argument("--file", action="append", default=[], help="existing fp32 checkpoint")
    p.add_argument("--dir", default=None, help="where to write models (default: a temp dir)")
    p.add_argument("--version", type=int, choices=(0, 1), default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep generated and quantized files")
    p.add_argument("--warm", action="store_true", help="do not drop the page cache")
    p.add_argument("--against", default=None, help="another qllama tree to quantize with too")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    if not args.shapes and not args.file:
        p.error("give model shapes or --file")
    for s in args.shapes:
        if s not in PRESETS:
            p.error(f"unknown shape {s}; known: {', '.join(PRESETS)}")
    workdir = args.dir or tempfile.mkdtemp(prefix="qllama-bench-")
    os.makedirs(workdir, exist_ok=True)
    inputs = [(f, False) for f in args.file]
    rows = []
    try:
        for shape in args.shapes:
            path = os.path.join(workdir, f"{shape}.v{args.version}.bin")
            t0 = time.perf_counter()
            if not os.path.exists(path):
                write_random_model(path, shape, version=args.version)
            size = os.path.getsize(path)
            print(f"# {path}: {size / 1e9:.2f} GB ready in {time.perf_counter() - t0:.1f} s",
                  flush=True)
            inputs.append((path, not args.keep))
        for path, generated in inputs:
            config = read_config(path)
            size = os.path.getsize(path)
            out = os.path.join(workdir, os.path.basename(path) + ".q80")
            rd, dropped = read_speed(path, not args.warm)
            trees = [(None, "")] + ([(args.against, f" ({args.against})")] if args.against
                                    else [])
            for _ in range(args.rounds):
                for tree, name in trees:
                    q = run_quantize(path, out, args.threads, not args.warm, tree)
                    floor = io_floor([path], os.path.getsize(out), out + ".io", not args.warm)
                    mbps = size / 1e6 / q["wall"]
                    inner = size / 1e6 / q["inner_s"]
                    row = (os.path.basename(path) + name,
                           f"{config.dim}x{config.hidden_dim}x{config.n_layers}",
                           size / 1e6, q["wall"], mbps, inner, rd, inner / rd, floor,
                           inner / floor, q["rss_mb"],
                           "cold" if (dropped and q["dropped"]) else "warm?")
                    rows.append(row)
                    print(f"# {row[0]}: quantize {inner:,.0f} MB/s ({mbps:,.0f} MB/s wall incl. "
                          f"start-up), read {rd:,.0f} MB/s, ratio {inner / rd:.2f}; I/O floor "
                          f"{floor:,.0f} MB/s, ratio {inner / floor:.2f}; peak RSS "
                          f"{q['rss_mb']:,.0f} MB ({q['rss_source']})", flush=True)
            if not args.keep:
                os.unlink(out)
                if generated:
                    os.unlink(path)
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{'file':<24} {'dim x hid x L':<16} {'MB':>9} {'wall s':>8} {'MB/s wall':>9} "
          f"{'MB/s':>8} {'read MB/s':>9} {'ratio':>6} {'floor MB/s':>10} {'r floor':>7} "
          f"{'RSS MB':>7} cache")
    for r in rows:
        print(f"{r[0]:<24} {r[1]:<16} {r[2]:>9,.0f} {r[3]:>8.2f} {r[4]:>9,.0f} {r[5]:>8,.0f} "
              f"{r[6]:>9,.0f} {r[7]:>6.2f} {r[8]:>10,.0f} {r[9]:>7.2f} {r[10]:>7,.0f} {r[11]}")
    print("\nMB/s: input bytes / quantize's own time (open to fsync'd rename), ratio = that / "
          "read MB/s, r floor = that / the I/O floor (input read while the output's bytes are "
          "written and fsync'd) measured right after it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
