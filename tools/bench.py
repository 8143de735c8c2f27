#!/usr/bin/env python3
"""Benchmark the qllama engine on random-weight models of real shapes.

    python tools/bench.py       # stories15M, stories110M; int8, fp32; 1, 2 threads
    python tools/bench.py --shapes llama2-7b --paths int8 --threads 2
    python tools/bench.py --json > bench.json

Measures, each configuration in its own subprocess (so peak RSS is per configuration):
  decode   tok/s of session.feed([token]) calls after a 16-token prompt (random ids)
  prefill  tok/s of session.feed(prompt) for a 256-token prompt
  RSS      the child's peak resident set (VmHWM), mapped weights included
and the machine's memory read bandwidth (a streaming sum over a buffer far larger
than the caches, qllama/_kernels/membench.pyx) with 1 and 2 threads, measured at
the start and at the end of the run. The roofline of a configuration is that
bandwidth (same thread count, best of the run) divided by the weight bytes one
decoded token reads: decode / roofline is the fraction of the memory-bound ceiling.

The machine may be shared: absolute figures are noisy, so the tool also prints
ratios measured within this one run (threads scaling, int8 vs fp32, fraction of
roofline). Figures of llama2.c and llama.cpp are quoted from the issue, not measured.

Model files are cached in --dir (default runs/bench-models, git-ignored):
<shape>.f32.bin (version 1, qllama.synth.write_random_model) and <shape>.q80.bin
(version 2, qllama.quant.pipeline.quantize_file, group size 64).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from qllama.diagnostics import huge_page_bytes, peak_rss_bytes  # noqa: E402
from qllama.formats import llama2c as formats  # noqa: E402
from qllama.formats.llama2c import Config  # noqa: E402

# llama2-7b-4layers: Llama-2-7B's matrices with 4 of its 32 layers (a 1.1 GB int8 file
# made in seconds): its decode / roofline is a quick stand-in for the 7B's.
SHAPES = ("stories15M", "stories110M", "llama2-7b", "llama2-7b-4layers")
PATHS = ("int8", "fp32")
DECODE_PROMPT = 16  # tokens fed before decode timing starts
GiB = 1 << 30

# Quoted from the issue: llama2.c / llama.cpp on this machine kind. NOT measured here
# (llama2.c cannot be built in this environment). (shape, engine, path, threads,
# what, low, high); low == high for a single figure.
REFERENCE = (
    ("stories15M", "llama2.c runq.c", "int8", 2, "decode", 500, 540),
    ("stories15M", "llama2.c run.c", "fp32", 2, "decode", 690, 720),
    ("stories15M", "llama.cpp Q8_0", "int8", 2, "decode", 1190, 1270),
    ("stories110M", "llama2.c runq.c", "int8", 2, "decode", 81, 85),
    ("stories110M", "llama2.c runq.c", "int8", 1, "decode", 46, 49),
    ("stories110M", "llama2.c run.c", "fp32", 2, "decode", 47, 54),
    ("stories110M", "llama.cpp Q8_0", "int8", 2, "decode", 206, 223),
    ("stories110M", "llama2.c runq.c", "int8", 2, "prefill", 85, 85),
    ("stories110M", "target (issue)", "int8", 2, "prefill", 680, 680),
    ("llama2-7b", "llama2.c runq.c", "int8", 2, "decode", 1.5, 1.5),
    ("llama2-7b", "llama.cpp Q8_0", "int8", 2, "decode", 3.75, 3.75),
)
REFERENCE_RSS = {("llama2-7b", "llama2.c runq.c"): 7.5e9}


# ---------------------------------------------------------------------------
# Machine


def machine_info() -> dict:
    from qllama import kernels
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "flags": [], "l3_bytes": None, "mem_bytes": None,
            "kernels": kernels.select()}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                info["cpu"] = value.strip()
            elif key == "flags":
                have = set(value.split())
                info["flags"] = [f for f in ("avx2", "fma", "avx512f") if f in have]
                break
    except OSError:
        pass
    try:  # the largest cache level seen by cpu0
        base = Path("/sys/devices/system/cpu/cpu0/cache")
        sizes = []
        for d in base.glob("index*"):
            text = (d / "size").read_text().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            sizes.append(int(text.rstrip("KMG")) * mult)
        info["l3_bytes"] = max(sizes) if sizes else None
    except (OSError, ValueError):
        pass
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                info["mem_bytes"] = int(line.split()[1]) * 1024
            elif line.startswith("MemAvailable:"):
                info["mem_available"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return info


def child_bandwidth(size: int, threads: list[int], repeats: int) -> dict:
    """Best-of-`repeats` read bandwidth per thread count; trials interleaved."""
    from membench import read_sum
    buf = np.ones(size // 8, dtype=np.uint64)  # (words,) touched: every page is resident
    best = {t: float("inf") for t in threads}
    for _ in range(repeats):
        for t in threads:
            total, seconds = read_sum(buf, t)
            if total != buf.size:
                raise RuntimeError(f"membench: sum {total} != {buf.size}")
            best[t] = min(best[t], seconds)
    return {str(t): buf.nbytes / best[t] for t in threads}


# ---------------------------------------------------------------------------
# Models


def shape_config(shape: str) -> Config:
    from dataclasses import replace

    from qllama.synth import PRESETS
    if shape == "llama2-7b-4layers":
        return replace(PRESETS["llama2-7b"], n_layers=4)
    return PRESETS[shape]


def model_files(directory: Path, shape: str) -> dict:
    return {"fp32": directory / f"{shape}.f32.bin", "int8": directory / f"{shape}.q80.bin"}


def valid_file(path: Path) -> bool:
    try:
        formats.read_config(path)
        return True
    except Exception:  # missing, truncated, or an older layout: regenerate
        return False


def ensure_models(directory: Path, shape: str, paths: list[str], log) -> dict:
    """Write (once) the files `paths` need; returns {path: file}."""
    from qllama.quant.pipeline import quantize_file
    from qllama.synth import write_random_model
    directory.mkdir(parents=True, exist_ok=True)
    files = model_files(directory, shape)
    need_f32 = "fp32" in paths or ("int8" in paths and not valid_file(files["int8"]))
    made_f32 = False
    if need_f32 and not valid_file(files["fp32"]):
        size = formats.expected_size(shape_config(shape).as_version(1))
        log(f"writing {files['fp32']} ({size / 1e9:.2f} GB) ...")
        t0 = time.perf_counter()
        write_random_model(files["fp32"], shape_config(shape), seed=0, version=1, force=True)
        log(f"  done in {time.perf_counter() - t0:.0f} s")
        made_f32 = True
    if "int8" in paths and not valid_file(files["int8"]):
        log(f"quantizing to {files['int8']} ...")
        t0 = time.perf_counter()
        quantize_file(files["fp32"], files["int8"], force=True)
        log(f"  done in {time.perf_counter() - t0:.0f} s")
        if "fp32" not in paths and made_f32 and os.path.getsize(files["fp32"]) > 4 * GiB:
            os.remove(files["fp32"])  # only the int8 file was wanted; free the disk
            log(f"  removed the fp32 intermediate {files['fp32']}")
    return {p: files[p] for p in paths}


def weight_bytes_per_token(config: Config) -> int:
    """Bytes of weights one decoded token reads: every matrix (Q8_0: values and
    scales) and norm, and the classifier; of the token table only one row."""
    total = 0
    for e in formats.layout(config):
        if e.name in ("freqs_cos", "freqs_sin"):
            continue
        if e.name == "tok_embeddings" and not config.shared_classifier:
            total += e.nbytes // e.shape[0]  # one embedding row
            continue
        total += e.nbytes  # tok_embeddings here is also the classifier
    return total


def child_model(path: str, threads: int, prompt: int, decode: int, repeats: int,
                seed: int) -> dict:
    """Decode and prefill speed of one file at one thread count, in this process."""
    from qllama.model import Model
    model = Model(path, threads=threads)
    c = model.config
    rng = np.random.default_rng(seed)

    def ids(n):
        return rng.integers(3, c.vocab_size, n, dtype=np.int32)  # (n,) skip BOS/EOS

    model.session(8).feed(ids(min(8, c.seq_len)))  # warm-up: every weight page read once
    prompt = min(prompt, c.seq_len)
    decode = max(1, min(decode, c.seq_len - DECODE_PROMPT))
    prefill_s, decode_s, per_token = [], [], []
    for _ in range(repeats):
        session = model.session(prompt)
        tokens = ids(prompt)
        t0 = time.perf_counter()
        session.feed(tokens)
        prefill_s.append(time.perf_counter() - t0)

        session = model.session(DECODE_PROMPT + decode)
        session.feed(ids(DECODE_PROMPT))
        tokens = ids(decode)
        times = []
        for tok in tokens:
            t0 = time.perf_counter()
            session.feed(tok[None])
            times.append(time.perf_counter() - t0)
        decode_s.append(sum(times))
        per_token.extend(times)
    return {
        "prompt_tokens": prompt, "decode_tokens": decode, "repeats": repeats,
        "prefill_tok_s": prompt / min(prefill_s),
        "decode_tok_s": decode / min(decode_s),
        "decode_ms_median": 1e3 * statistics.median(per_token),
        "peak_rss_bytes": peak_rss_bytes(),
        "huge_page_bytes": huge_page_bytes(model.file.buffer),
        "file_bytes": model.file.buffer.nbytes,
        "kernel_build": kernel_build(),
    }


def kernel_build() -> str:
    """The engine build this process uses: its .so file's modification time (UTC)."""
    from qllama._kernels import engine
    mtime = os.path.getmtime(engine.__file__)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(mtime))


def busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat), or NaN."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: float, log) -> float:
    """Wait up to `limit` s until other processes use < 0.25 cores (1 s samples);
    returns the last sample."""
    deadline = time.perf_counter() + limit
    while True:
        b0, t0 = busy_seconds(), time.perf_counter()
        time.sleep(1.0)
        others = (busy_seconds() - b0) / (time.perf_counter() - t0)
        if not others >= 0.25 or time.perf_counter() >= deadline:  # NaN: cannot tell
            if others >= 0.25:
                log(f"  machine still busy ({others:.1f} cores) after {limit:.0f} s; measuring anyway")
            return others


def run_child(args: list[str]) -> dict:
    """Run this script as a child with `args`; its last stdout line is JSON.

    Adds "others_cores": the average number of cores that other processes kept
    busy while the child ran (machine busy time minus the child's own CPU time).
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, t0 = busy_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    busy1, wall = busy_seconds(), time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    own = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["others_cores"] = max(0.0, (busy1 - busy0 - own) / wall)
    result["wall_seconds"] = wall
    return result


# ---------------------------------------------------------------------------
# Report


def fmt_rate(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w)  # noqa: E731
                                for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def huge_fraction(trial: dict):
    """Share of the model file mapped with 2 MiB pages at the end of a trial."""
    if trial.get("huge_page_bytes") is None:
        return None
    return trial["huge_page_bytes"] / trial["file_bytes"]


def huge(run: dict) -> str:
    f = run.get("huge_fraction")  # absent in runs saved before it existed
    return "-" if f is None else f"{100 * f:.0f}%"


def paired(run: dict) -> str:
    f = run.get("paired_fraction")  # absent in runs saved before it existed
    return "-" if f is None else f"{f:.2f}"


def report(result: dict) -> str:
    m, bw = result["machine"], result["bandwidth"]
    builds = result.get("kernel_builds", [])
    out = [f"qllama bench  {result['date']}  commit {result['commit']}  transformer .so built "
           + (", ".join(builds) or "?")
           + ("  (REBUILT DURING THE RUN: figures mix builds)" if len(builds) > 1 else ""),
           f"machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags']) or '-'}, "
           f"largest cache {m['l3_bytes'] / 2**20:.0f} MiB, RAM {m['mem_bytes'] / 2**30:.1f} GiB, "
           f"dot kernels {m.get('kernels', '?')}",
           "",
           f"memory read bandwidth (streaming sum of {bw['buffer_bytes'] / GiB:.1f} GiB, "
           f"best of {bw['repeats']}, membench.pyx):"]
    for t in bw["threads"]:
        out.append(f"  {t} thread{'s' if t > 1 else ' '}: {bw['best'][str(t)] / 1e9:6.1f} GB/s  "
                   f"(start {bw['start'][str(t)] / 1e9:.1f}, end {bw['end'][str(t)] / 1e9:.1f})")
    rows = []
    for r in result["runs"]:
        rows.append([r["shape"], r["path"], r["threads"], f"{r['weight_bytes'] / 1e6:,.1f}",
                     fmt_rate(r["decode_tok_s"]), fmt_rate(r["prefill_tok_s"]),
                     f"{r['peak_rss_bytes'] / 1e6:,.0f}", fmt_rate(r["roofline_tok_s"]),
                     f"{r['roofline_fraction']:.2f}", paired(r), f"{r['others_cores']:.1f}",
                     huge(r), "in cache" if r["fits_cache"] else ""])
    out += ["", table(["shape", "path", "thr", "weights MB/tok", "decode tok/s",
                       "prefill tok/s", "peak RSS MB", "roofline tok/s", "decode/roof",
                       "paired", "others", "2M pages",
                       ""],
                      rows)]
    if result.get("skipped"):
        out.append("skipped: " + "; ".join(result["skipped"]))
    plan = {}
    for r in result["runs"]:
        plan.setdefault(r["shape"], f"{r['decode_tokens']} tokens, best of {r['repeats']} "
                                    f"repeats x {r['rounds']} rounds")
    out.append(f"decode: N tokens after a {result['decode_prompt']}-token prompt ("
               + "; ".join(f"{k}: {v}" for k, v in plan.items())
               + f"); prefill: a {result['prompt_tokens']}-token prompt (capped at seq_len); "
               "random token ids.")
    out.append("others: cores other processes kept busy (average) during the round that gave "
               "the best decode (the machine is shared; > 0.3: that figure is disturbed).")
    out.append("2M pages: share of the model file mapped with 2 MiB pages (the rest 4 KiB; "
               "a file's page cache keeps the folio sizes it was written or read with, "
               "docs/performance.md).")
    out.append("roofline = bandwidth at that thread count / weight bytes per token (KV cache "
               "reads not counted). 'in cache': the weights fit in the largest cache "
               f"({m['l3_bytes'] / 2**20:.0f} MiB), so DRAM bandwidth does not bound them and "
               "the fraction can exceed 1; the roofline is meaningful for the 7B shape. "
               "decode/roof: best decode over the best bandwidth of the run's start and end "
               "probes (conservative); paired: median over rounds of each round's decode over "
               "a probe run just before it.")

    by = {(r["shape"], r["path"], r["threads"]): r for r in result["runs"]}
    ratio_rows = []
    for (shape, path, t), r in by.items():
        if t != 1 and (shape, path, 1) in by:
            one = by[(shape, path, 1)]
            ratio_rows.append([shape, f"{path} {t} thr / 1 thr",
                               f"{r['decode_tok_s'] / one['decode_tok_s']:.2f}",
                               f"{r['prefill_tok_s'] / one['prefill_tok_s']:.2f}"])
        if path == "int8" and (shape, "fp32", t) in by:
            f = by[(shape, "fp32", t)]
            ratio_rows.append([shape, f"int8 / fp32 at {t} thr",
                               f"{r['decode_tok_s'] / f['decode_tok_s']:.2f}",
                               f"{r['prefill_tok_s'] / f['prefill_tok_s']:.2f}"])
    if ratio_rows:
        out += ["", "ratios measured within this run:",
                table(["shape", "ratio", "decode", "prefill"], ratio_rows)]

    ref_rows = []
    shapes = {r["shape"] for r in result["runs"]}
    for shape, engine, path, t, what, lo, hi in REFERENCE:
        if shape not in shapes:
            continue
        mid = (lo + hi) / 2
        ours = by.get((shape, path, t))
        value = ours[f"{what}_tok_s"] if ours else None
        rng = fmt_rate(lo) if lo == hi else f"{fmt_rate(lo)}-{fmt_rate(hi)}"
        ref_rows.append([shape, engine, f"{path} {t} thr {what}", rng, fmt_rate(mid),
                         fmt_rate(value), f"{value / mid:.2f}" if value else "-"])
    out += ["", "reference figures from the issue, NOT measured in this run "
                "(llama2.c / llama.cpp on this machine kind; llama2.c cannot be built here):",
            table(["shape", "engine", "config", "ref tok/s", "midpoint", "qllama (this run)",
                   "qllama/mid"], ref_rows)]
    for (shape, engine), rss in REFERENCE_RSS.items():
        if shape not in shapes:
            continue
        ours = by.get((shape, "int8", 2)) or by.get((shape, "int8", 1))
        line = f"  {shape} {engine} peak RSS {rss / 1e9:.1f} GB (issue)"
        if ours:
            line += f"; qllama int8 {ours['threads']} thr {ours['peak_rss_bytes'] / 1e9:.2f} GB"
        out.append(line)
    return "\n".join(out)


# ---------------------------------------------------------------------------
# CLI


def csv(choices):
    def parse(text):
        items = [x.strip() for x in text.split(",") if x.strip()]
        if choices is int:
            return [int(x) for x in items]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; known: {', '.join(choices)}")
        return items
    return parse


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                "qllama"], capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=csv(SHAPES), default=["stories15M", "stories110M"],
                   help="comma-separated: " + ",".join(SHAPES))
    p.add_argument("--paths", type=csv(PATHS), default=list(PATHS), help="int8,fp32")
    p.add_argument("--threads", type=csv(int), default=[1, 2], help="e.g. 1,2")
    p.add_argument("--dir", type=Path, default=REPO / "runs" / "bench-models",
                   help="model file cache (default runs/bench-models)")
    p.add_argument("--decode-tokens", type=int, default=None,
                   help="decoded tokens per repeat (default 128; 7B: 24)")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=None,
                   help="repeats per configuration, best kept (default 3; 7B: 1)")
    p.add_argument("--rounds", type=int, default=2,
                   help="passes over all configurations, best kept (default 2)")
    p.add_argument("--quiet-wait", type=float, default=30,
                   help="before each measurement wait up to this many seconds for other "
                        "processes to go idle (default 30; 0: never wait)")
    p.add_argument("--bw-gib", type=float, default=None,
                   help="bandwidth buffer (default 4 GiB, less if memory is short)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--save", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--report", type=Path, help="print the table of a run saved with --save")
    p.add_argument("--seed", type=int, default=1)
    # internal: one measurement in a child process
    p.add_argument("--child", choices=("model", "bandwidth"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.report:
        result = json.loads(args.report.read_text())
        print(report(result))
        return 0
    if args.child == "bandwidth":
        print(json.dumps(child_bandwidth(int(args.bw_gib * GiB), args.threads, args.repeats)))
        return 0
    if args.child == "model":
        print(json.dumps(child_model(args.model, args.threads[0], args.prompt_tokens,
                                     args.decode_tokens, args.repeats, args.seed)))
        return 0

    def log(msg):
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    machine = machine_info()
    if args.bw_gib is None:
        avail = machine.get("mem_available") or 8 * GiB
        args.bw_gib = max(0.5, min(4.0, avail / 4 / GiB))
    threads = sorted(set(args.threads) | {1, 2})  # the bandwidth is always probed at 1 and 2
    bw_args = ["--child", "bandwidth", "--bw-gib", str(args.bw_gib),
               "--threads", ",".join(map(str, threads)), "--repeats", "5"]
    log(f"bandwidth ({args.bw_gib:.1f} GiB buffer) ...")
    if args.quiet_wait > 0:
        wait_quiet(args.quiet_wait, log)
    bw_start = run_child(bw_args)

    configs = []  # (shape, path, threads, file, weight bytes, decode tokens, repeats)
    skipped = []
    for shape in args.shapes:
        paths = []
        for path in args.paths:
            c = shape_config(shape)
            c = c.as_version(2, 64) if path == "int8" else c.as_version(1)
            size = formats.expected_size(c)
            if machine["mem_bytes"] and size > 0.85 * machine["mem_bytes"]:
                # decode would re-read the file from disk every token
                log(f"skipping {shape} {path}: {size / 1e9:.1f} GB does not fit in RAM")
                skipped.append(f"{shape} {path} ({size / 1e9:.1f} GB > RAM)")
            else:
                paths.append(path)
        if not paths:
            continue
        files = ensure_models(args.dir, shape, paths, log)
        big = shape == "llama2-7b"
        decode = args.decode_tokens or (24 if big else 128)
        repeats = args.repeats or (1 if big else 3)
        for path in paths:
            wbytes = weight_bytes_per_token(formats.read_config(files[path]))
            for t in args.threads:
                configs.append((shape, path, t, files[path], wbytes, decode, repeats))

    # Rounds run every configuration in turn, so a burst of load from other
    # processes hits one round of each rather than all of one configuration.
    trials = {c[:3]: [] for c in configs}
    for round_ in range(args.rounds):
        for shape, path, t, file, wbytes, _, repeats in configs:
            log(f"round {round_ + 1}/{args.rounds}: {shape} {path} {t} thread(s) ...")
            if args.quiet_wait > 0:
                wait_quiet(args.quiet_wait, log)
            # a short probe right before: the host's bandwidth drifts by up to a third
            # within a run, so each trial is also set against the bandwidth of its moment
            near = run_child(["--child", "bandwidth", "--bw-gib", str(min(1.0, args.bw_gib)),
                              "--threads", str(t), "--repeats", "3"])[str(t)]
            r = run_child(["--child", "model", "--model", str(file), "--threads", str(t),
                           "--prompt-tokens", str(args.prompt_tokens),
                           "--decode-tokens", str(decode), "--repeats", str(repeats),
                           "--seed", str(args.seed)])
            r["bandwidth_before"] = near
            r["paired_fraction"] = r["decode_tok_s"] * wbytes / near
            log(f"  decode {r['decode_tok_s']:.1f} tok/s ({r['paired_fraction']:.2f} of the "
                f"roofline at {near / 1e9:.1f} GB/s just before), prefill "
                f"{r['prefill_tok_s']:.1f} tok/s, RSS {r['peak_rss_bytes'] / 1e6:.0f} MB, "
                f"other processes {r['others_cores']:.2f} cores")
            trials[(shape, path, t)].append(r)
    runs = []
    for shape, path, t, file, wbytes, _, repeats in configs:
        rs = trials[(shape, path, t)]
        runs.append({
            "shape": shape, "path": path, "threads": t, "file": str(file),
            "weight_bytes": wbytes,
            "fits_cache": bool(machine["l3_bytes"]) and wbytes <= machine["l3_bytes"],
            "prompt_tokens": rs[0]["prompt_tokens"], "decode_tokens": rs[0]["decode_tokens"],
            "repeats": repeats, "rounds": len(rs),
            "decode_tok_s": max(r["decode_tok_s"] for r in rs),
            "prefill_tok_s": max(r["prefill_tok_s"] for r in rs),
            "decode_ms_median": min(r["decode_ms_median"] for r in rs),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
            "huge_fraction": huge_fraction(rs[-1]),
            # of the round that gave the best decode figure
            "others_cores": max(rs, key=lambda r: r["decode_tok_s"])["others_cores"],
            "paired_fraction": statistics.median(r["paired_fraction"] for r in rs),
            "trials": rs,
        })

    log("bandwidth again ...")
    if args.quiet_wait > 0:
        wait_quiet(args.quiet_wait, log)
    bw_end = run_child(bw_args)
    best = {k: max(bw_start[k], bw_end[k]) for k in bw_start}
    for r in runs:
        bw = best.get(str(r["threads"]))
        if bw is None:  # a thread count not probed: use the nearest lower one
            bw = best[str(max(t for t in threads if t <= r["threads"]))]
        r["roofline_tok_s"] = bw / r["weight_bytes"]
        r["roofline_fraction"] = r["decode_tok_s"] / r["roofline_tok_s"]

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(),
        "kernel_builds": sorted({t["kernel_build"] for r in runs for t in r["trials"]}),
        "machine": machine,
        "bandwidth": {"buffer_bytes": int(args.bw_gib * GiB), "repeats": 5, "threads": threads,
                      "start": bw_start, "end": bw_end, "best": best},
        "prompt_tokens": args.prompt_tokens, "decode_prompt": DECODE_PROMPT,
        "runs": runs,
        "skipped": skipped,
        "reference_from_issue_not_measured": [
            dict(zip(("shape", "engine", "path", "threads", "what", "low", "high"), ref))
            for ref in REFERENCE],
    }
    if args.save:
        args.save.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
