#!/usr/bin/env python3
"""Benchmark `qllama import`: a Hugging Face folder of a real shape (bf16 shards) to
version 2, its peak RSS and speed against a plain sequential read of the shards.

    python tools/bench_import.py                       # llama2-7b: 13.5 GB in runs/bench-import
    python tools/bench_import.py --shape stories110M --keep
    python tools/bench_import.py --folder path/to/Llama-2-7b-hf

In one run: (1) the folder is made if absent (tools/make_model.py --hf: random
weights, bf16, 5 GB shards); (2) read speed of its shards: each read whole,
sequentially, with readinto into one reused 64 MB buffer; (3) `python -m qllama
import FOLDER OUT --to v2` in a subprocess under /usr/bin/time -v (peak RSS); (4)
the import's I/O alone: the shards read while as many bytes as the output are
written and fsync'd, no computation. As root the page cache is dropped before (2),
(3) and (4): all read from disk.
MB/s is shard bytes over import's own time (config to fsync'd rename).

    python tools/bench_import.py --keep --against /tmp/base --rounds 2

--against DIR also imports with the qllama tree at DIR (a checkout with its
extensions built), alternating with this one and the I/O floor for --rounds rounds:
on a shared machine only measurements of one run, interleaved, compare.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_quantize import READ_BUF, drop_caches, io_floor  # noqa: E402
from make_model import write_random_hf  # noqa: E402

from qllama.synth import PRESETS  # noqa: E402


def shards(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors"))


def read_speed(paths: list[str], cold: bool) -> tuple[float, int, bool]:
    """MB/s reading every file whole, sequentially, into one reused buffer."""
    dropped = drop_caches() if cold else False
    view = memoryview(bytearray(READ_BUF))
    n = 0
    t0 = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while k := f.readinto(view):
                n += k
    return n / 1e6 / (time.perf_counter() - t0), n, dropped


def run_import(folder: str, out: str, threads: int | None, cold: bool,
               tree: str | None = None) -> dict:
    dropped = drop_caches() if cold else False
    env = dict(os.environ, COLUMNS="250")
    cwd = None
    if tree:  # `python -m` puts the working directory first on sys.path: run from the tree
        env["PYTHONPATH"] = cwd = os.path.abspath(tree)
        folder, out = os.path.abspath(folder), os.path.abspath(out)
    # Python, numpy, safetensors and qllama back in the cache: time the import, not imports.
    subprocess.run([sys.executable, "-c", "import qllama.interop.hf_import, qllama.cli, "
                    "safetensors, ml_dtypes, rich.table"], check=True, env=env, cwd=cwd)
    cmd = [sys.executable, "-m", "qllama", "import", folder, out, "--to", "v2", "--force"]
    if threads:
        cmd += ["--threads", str(threads)]
    if os.path.exists("/usr/bin/time"):
        cmd = ["/usr/bin/time", "-v"] + cmd
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"import failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    rss_kb = int(m.group(1)) if m else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    inner = re.search(r"in\s+([\d.]+)\s+s,\s+([\d,]+)\s+MB/s", p.stdout)
    return {"wall": wall, "seconds": float(inner.group(1)) if inner else wall,
            "rss_mb": rss_kb / 1024, "dropped": dropped,
            "rss_source": "/usr/bin/time -v" if m else "getrusage(children)"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llama2-7b", choices=tuple(PRESETS))
    p.add_argument("--folder", default=None, help="an existing Hugging Face folder to import")
    p.add_argument("--dir", default="runs/bench-import", help="where to write (git-ignored)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the generated folder and output")
    p.add_argument("--warm", action="store_true", help="do not drop the page cache")
    p.add_argument("--against", default=None, help="another qllama tree to import with too")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    folder = args.folder or os.path.join(args.dir, f"{args.shape}-hf")
    out = os.path.join(args.dir, f"{os.path.basename(folder.rstrip('/'))}.q80.bin")
    generated = False
    try:
        if not os.path.isdir(folder):
            t0 = time.perf_counter()
            n = write_random_hf(folder, PRESETS[args.shape], threads=args.threads)
            generated = True
            print(f"# {folder}: {n / 1e9:.2f} GB of bf16 written in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        paths = shards(folder)
        rd, size, dropped_r = read_speed(paths, not args.warm)
        print(f"# plain read of {len(paths)} shards ({size / 1e9:.2f} GB): {rd:,.0f} MB/s",
              flush=True)
        trees = [(None, "this tree")] + ([(args.against, args.against)] if args.against else [])
        for _ in range(args.rounds):
            for tree, name in trees:
                r = run_import(folder, out, args.threads, not args.warm, tree)
                floor = io_floor(paths, os.path.getsize(out), out + ".io", not args.warm)
                print(f"# the import's I/O alone (shards read while "
                      f"{os.path.getsize(out) / 1e9:.2f} GB are written and fsync'd): "
                      f"{floor:,.0f} MB/s of shards", flush=True)
                mbps = size / 1e6 / r["seconds"]
                cache = "cold" if dropped_r and r["dropped"] else "warm (page cache not dropped)"
                print(f"import --to v2 ({name}): {r['seconds']:.1f} s ({r['wall']:.1f} s wall), "
                      f"{mbps:,.0f} MB/s of shards, {mbps / rd:.2f}x the plain read "
                      f"({rd:,.0f} MB/s), {mbps / floor:.2f}x its I/O alone ({floor:,.0f} MB/s); "
                      f"peak RSS {r['rss_mb']:,.0f} MB ({r['rss_source']}); output "
                      f"{os.path.getsize(out) / 1e9:.2f} GB; {cache}", flush=True)
    finally:
        if not args.keep:
            if os.path.exists(out):
                os.unlink(out)
            if generated:
                shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
