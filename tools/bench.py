#!/usr/bin/env python3
"""qllama against llama.cpp and llama2.c's runq.c on the same random weights, in one run.

    python tools/bench.py --llama-bench ../refs/llama.cpp/build/bin/llama-bench \\
                          --runq ../refs/llama2c/runq            # stories15M, stories110M
    python tools/bench.py --shapes llama2-7b --threads 2 --prompt 64 --decode 16 --llama-bench ...
    python tools/bench.py --contended      # a busy process beside every measurement
    python tools/bench.py --variants avx2,avx512vnni --shapes stories110M   # kernels A/B
    python tools/bench.py --gguf q4_k_m --llama-quantize .../llama-quantize --llama-bench ...

(../shared/tools/refs.sh builds llama-bench and runq from public snapshots.)

Models are random weights of real shapes (qllama.synth), cached in --dir
(runs/bench-models): SHAPE.v1.bin (fp32), SHAPE.q80.bin (qllama quantize, which
runq reads too) and, for llama.cpp, SHAPE.q8_0.gguf (qllama export --to gguf).

Each round runs every engine once, in turn, each in its own process, so all of them
see the same machine; the tool prints medians over rounds and the ratios
qllama / llama.cpp and qllama / runq.c, both measured here, never quoted. Per engine:
  decode   tok/s over --decode single-token steps after a 16-token prompt
  prefill  tok/s of a --prompt-token prompt (runq.c has no batched prefill: its
           prompt runs at its decode speed, so it has no prefill column)
  RSS      the process's peak resident set (weights as mapped, KV cache, runtime)
--reps N has each qllama and llama.cpp process measure decode and prefill N times
(a fresh session each time) and average the rates, as llama-bench -r N does.
--gguf TYPES (llama-quantize's names: q4_k_m, q6_k, ...) adds, per type, one GGUF file
both engines run: llama-quantize's output from an F32 GGUF of the same weights (or
`qllama quantize --type` with --gguf-by qllama). qllama on it is compared with llama.cpp
on it and with qllama on its own Q8_0 (SHAPE.q80.bin).
--contended starts a busy loop (one process, one core) before each measurement and
stops it after: how each engine's default behaves on a machine that is not idle.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from qllama import kernels  # noqa: E402
from qllama.synth import PRESETS  # noqa: E402

SHAPES = tuple(PRESETS)
LLAMA_TOKENIZER = REPO.parent / "shared" / "data" / "tokenizer.bin"  # runq.c needs one

QLLAMA_CHILD = r"""
import json, resource, sys, time
import numpy as np
import qllama
path, threads, prompt, decode, variant, reps = sys.argv[1:7]
threads, prompt, decode, reps = int(threads), int(prompt), int(decode), int(reps)
m = qllama.load(path, threads=threads, variant=variant or None)
rng = np.random.default_rng(0)
ids = lambda n: [1] + [int(i) for i in rng.integers(3, m.config.vocab_size, n - 1)]
cap = min(m.config.seq_len, max(prompt, 16 + decode) + 1)
m.session(cap).feed(ids(8))                   # warm-up: pages in, threads up
pp, tg = [], []                               # rates of each repetition, as llama-bench -r
for _ in range(reps):
    s = m.session(cap)
    x = ids(prompt)
    t = time.perf_counter(); s.feed(x); pp.append(prompt / (time.perf_counter() - t))
for _ in range(reps):
    s = m.session(cap)
    s.feed(ids(16))
    xs = ids(decode + 1)[1:]
    t = time.perf_counter()
    for x in xs:
        s.feed([x])
    tg.append(decode / (time.perf_counter() - t))
print(json.dumps({"decode": sum(tg) / reps, "prefill": sum(pp) / reps, "variant": m.variant,
                  "threads_at_end": m.governor.current}))
"""


def run(cmd: list, env: dict) -> tuple[str, float]:
    """stdout and stderr, and the peak RSS (bytes) of a command, from its own rusage."""
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env,
                             cwd=tempfile.gettempdir())
        _, status, usage = os.wait4(p.pid, 0)
        err = p.stderr.read()
        if status:
            sys.exit(f"{' '.join(map(str, cmd[:3]))} failed ({status}): {err[-800:]}")
        out.seek(0)
        return out.read() + err, usage.ru_maxrss * 1024


def qllama_once(path, threads, args, variant) -> dict:
    out, rss = run([sys.executable, "-c", QLLAMA_CHILD, str(path), str(threads),
                    str(args.prompt), str(args.decode), variant or "", str(args.reps)],
                   {**os.environ, "PYTHONPATH": str(REPO)})
    line = next(x for x in reversed(out.splitlines()) if x.startswith("{"))
    return {**json.loads(line), "rss": rss}


def llama_once(gguf, threads, args) -> dict:
    out, rss = run([args.llama_bench, "-m", str(gguf), "-t", str(threads), "-p", str(args.prompt),
                    "-n", str(args.decode), "-r", str(args.reps), "-o", "json"], dict(os.environ))
    d = {"rss": rss}
    for e in json.loads(out[:out.rindex("]") + 1]):
        d["prefill" if e["n_prompt"] else "decode"] = e["avg_ts"]
    return d


def runq_once(q80, threads, args) -> dict:
    out, rss = run([args.runq, str(q80), "-z", str(args.tokenizer), "-t", "0",
                    "-n", str(16 + args.decode), "-i", "Once upon a time"],
                   {**os.environ, "OMP_NUM_THREADS": str(threads)})
    rate = float(out.rsplit("achieved tok/s:", 1)[1].split()[0])
    return {"decode": rate, "rss": rss}


def gguf_model(shape: str, kind: str, f: dict, args) -> Path:
    """SHAPE.KIND.gguf, quantized from the fp32 weights by llama-quantize or by qllama."""
    out = args.dir / f"{shape}.{kind}.{args.gguf_by}.gguf"
    if out.exists():
        return out
    ql = [sys.executable, "-m", "qllama"]
    if args.gguf_by == "qllama":
        subprocess.run([*ql, "quantize", str(f["v1"]), str(out), "--type", kind, "-q", "-z",
                        str(REPO.parent / "shared" / "data" / "tokenizer.model")], check=True)
        return out
    f32 = args.dir / f"{shape}.f32.gguf"
    if not f32.exists():
        subprocess.run([*ql, "export", str(f["v1"]), str(f32), "--to", "gguf", "--type", "f32",
                        "-z", str(REPO.parent / "shared" / "data" / "tokenizer.model")],
                       check=True)
    subprocess.run([args.llama_quantize, str(f32), str(out), kind.upper()], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def models(shape: str, directory: Path, gguf: bool, gguf_kinds=()) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    f = {"v1": directory / f"{shape}.v1.bin", "q80": directory / f"{shape}.q80.bin",
         "gguf": directory / f"{shape}.q8_0.gguf"}
    ql = [sys.executable, "-m", "qllama"]
    missing = (not f["q80"].exists() or (gguf and not f["gguf"].exists())
               or any(not (directory / f"{shape}.{k}.{a}.gguf").exists()
                      for a, k in gguf_kinds))
    if missing and not f["v1"].exists():  # the fp32 file only to make the others (7B: 27 GB)
        subprocess.run([sys.executable, str(REPO / "tools" / "make_model.py"), shape, str(f["v1"])],
                       check=True)
    if not f["q80"].exists():
        subprocess.run([*ql, "quantize", str(f["v1"]), str(f["q80"]), "-q"], check=True)
    if gguf and not f["gguf"].exists():
        subprocess.run([*ql, "export", str(f["v1"]), str(f["gguf"]), "--to", "gguf",
                        "--type", "q8_0", "-z", str(REPO.parent / "shared" / "data" /
                                                      "tokenizer.model")], check=True)
    return f


class Busy:
    """A bounded busy loop in its own process (one core), for --contended."""

    def __enter__(self):
        self.p = subprocess.Popen([sys.executable, "-c",
                                   "import time\nend = time.time() + 900\n"
                                   "while time.time() < end: pass"])
        time.sleep(0.2)  # let it reach the scheduler's steady state
        return self

    def __exit__(self, *exc):
        self.p.kill()
        self.p.wait()


def measure(shape, threads, args, variants) -> dict:
    """{engine label: [one dict per round]}, and {qllama label: its llama.cpp label}."""
    kinds = [k for k in args.gguf.split(",") if k]
    f = models(shape, args.dir, bool(args.llama_bench), [(args.gguf_by, k) for k in kinds])
    engines = [(f"qllama {v or kernels.select()}", lambda v=v: qllama_once(f["q80"], threads, args, v))
               for v in variants]
    refs = {label: "llama.cpp Q8_0" for label, _ in engines}
    if args.llama_bench:
        engines.append(("llama.cpp Q8_0", lambda: llama_once(f["gguf"], threads, args)))
    for kind in kinds:
        g = gguf_model(shape, kind, f, args)
        for v in variants:
            label = f"qllama {v or kernels.select()} {kind}"
            engines.append((label, lambda v=v, g=g: qllama_once(g, threads, args, v)))
            refs[label] = f"llama.cpp {kind}"
        if args.llama_bench:
            engines.append((f"llama.cpp {kind}", lambda g=g: llama_once(g, threads, args)))
    if args.runq:
        engines.append(("llama2.c runq.c", lambda: runq_once(f["q80"], threads, args)))
    results = {label: [] for label, _ in engines}
    results["refs"] = refs
    for _ in range(args.rounds):
        for label, once in engines:
            if args.contended:
                with Busy():
                    results[label].append(once())
            else:
                results[label].append(once())
    return results


def median(rounds: list, key: str):
    vals = [r[key] for r in rounds if key in r]
    return statistics.median(vals) if vals else None


def report(shape, threads, results, args) -> list[str]:
    lines = [f"{shape}, {threads} thread(s){', contended' if args.contended else ''}, "
             f"{args.rounds} rounds (medians):"]
    refs = results.pop("refs")
    runq = results.get("llama2.c runq.c")
    own = next(iter(results))  # qllama on its own Q8_0 file, the first engine
    for label, rounds in results.items():
        ref = results.get(refs.get(label))
        dec, pre, rss = median(rounds, "decode"), median(rounds, "prefill"), median(rounds, "rss")
        cols = [f"  {label:24s} decode {dec:9.1f} tok/s"]
        cols.append(f"prefill {pre:9.1f} tok/s" if pre else f"prefill {'-':>9s}      ")
        cols.append(f"RSS {rss / 1e6:8.0f} MB")
        if label.startswith("qllama"):
            if ref:
                cols.append(f"vs llama.cpp: decode {dec / median(ref, 'decode'):.2f}x "
                            f"prefill {pre / median(ref, 'prefill'):.2f}x "
                            f"RSS {rss / median(ref, 'rss'):.2f}x")
                cols.append("(round by round: " + ", ".join(
                    f"{key} {min(r):.2f}-{max(r):.2f}x" for key in ("decode", "prefill")
                    if (r := [a[key] / b[key] for a, b in zip(rounds, ref)
                              if a.get(key) and b.get(key)])) + ")")
            if label != own and own.startswith("qllama") and label.startswith(own):
                cols.append(f"vs own Q8_0: decode {dec / median(results[own], 'decode'):.2f}x "
                            f"prefill {pre / median(results[own], 'prefill'):.2f}x")
            if runq:
                cols.append(f"vs runq.c: decode {dec / median(runq, 'decode'):.2f}x")
            ends = sorted({r["threads_at_end"] for r in rounds})
            if threads > 1:
                cols.append(f"(threads in use at the end: {','.join(map(str, ends))})")
        lines.append("  ".join(cols))
    return lines


def host() -> str:
    name = "unknown CPU"
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"host: {name}, {os.cpu_count()} cores; features {' '.join(kernels.cpu_features())}; "
            f"qllama variants runnable: {', '.join(kernels.runnable())}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="stories15M,stories110M", help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--threads", default="2", help="thread counts, e.g. 1,2")
    ap.add_argument("--variants", default="", help="qllama kernel variants (default: the best)")
    ap.add_argument("--llama-bench", help="llama.cpp's llama-bench binary")
    ap.add_argument("--runq", help="llama2.c's runq binary")
    ap.add_argument("--gguf", default="", help="GGUF types both engines run, e.g. q4_k_m,q6_k")
    ap.add_argument("--gguf-by", choices=("llama.cpp", "qllama"), default="llama.cpp",
                    help="who quantizes the --gguf files")
    ap.add_argument("--llama-quantize", help="llama.cpp's llama-quantize (for --gguf)")
    ap.add_argument("--tokenizer", type=Path, default=LLAMA_TOKENIZER,
                    help="the Llama 2 tokenizer.bin runq.c needs")
    ap.add_argument("--contended", action="store_true", help="a busy process beside each run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=1,
                    help="repetitions per process, their rates averaged (llama-bench -r); "
                         "more steady on small shapes, whose prefill takes milliseconds")
    ap.add_argument("--prompt", type=int, default=256, help="prefill tokens")
    ap.add_argument("--decode", type=int, default=128, help="decode tokens")
    ap.add_argument("--dir", type=Path, default=REPO / "runs" / "bench-models")
    args = ap.parse_args(argv)
    shapes = args.shapes.split(",")
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s}; known: {', '.join(SHAPES)}")
    if args.gguf and args.gguf_by == "llama.cpp" and not args.llama_quantize:
        ap.error("--gguf needs --llama-quantize (or --gguf-by qllama)")
    variants = [v for v in args.variants.split(",") if v] or [None]
    for v in variants:
        if v:
            kernels.select(v)  # a clear error now rather than in every child
    print(host())
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, prompt {args.prompt}, "
          f"decode {args.decode}")
    for shape in shapes:
        for threads in map(int, args.threads.split(",")):
            print("\n".join(report(shape, threads, measure(shape, threads, args, variants), args)),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
