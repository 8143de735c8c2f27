#!/usr/bin/env python3
"""What q4_k_m costs in accuracy, ours against llama.cpp's, with and without an
importance matrix (measured, not a CI test: CI has no llama.cpp).

    python tools/quality.py MODEL.bin -z tokenizer.model --calibrate TEXT --eval TEXT2
        [--type q4_k_m] [--dir /tmp/quality] [--llama-cpp DIR] [--threads N] [--keep]

From the fp32 llama2.c MODEL: `qllama export --to gguf --type f32` (llama.cpp's
input), then four candidates of --type: llama-quantize's, ours (`qllama quantize`),
ours with the importance matrix of MODEL over --calibrate (quant.imatrix, as
`quantize --calibrate`), and llama-quantize --imatrix with that same matrix. Each is
evaluated against MODEL with `qllama eval`'s measures (qllama.evaluate: KL of the
candidate's next-token distribution to MODEL's, top-1 agreement, top-5 overlap) over
--eval, which should be another text than --calibrate. Prints a markdown table.

A 7B's fp32 file and its F32 GGUF take 54 GB: with --gguf-type f16 the GGUF is F16,
half that, for a MODEL whose weights are fp16 values (tools/make_model.py
--f16-exact; checked: the export must be exact). The reference and the calibration
run on the GGUF either way: its f16 or f32 weights widen to MODEL's fp32 values, and
the kernels then do the same float operations (kernels.h), so the numbers are
MODEL's. Each candidate is evaluated, then deleted (unless --keep), before the next
is written.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from check_quants import FTYPES, write_imatrix

from qllama.evaluate import evaluate, read_text, text_windows
from qllama.interop.gguf_export import export_gguf
from qllama.model import Model
from qllama.quant.imatrix import importance
from qllama.tokenizer import load_tokenizer


def run(cmd: list) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("-z", "--tokenizer", required=True)
    p.add_argument("--calibrate", required=True, metavar="TEXT")
    p.add_argument("--eval", required=True, metavar="TEXT")
    p.add_argument("--type", default="q4_k_m", choices=("q4_k_m", "q5_k_m", "q6_k"))
    p.add_argument("--dir", default="/tmp/quality")
    p.add_argument("--llama-cpp", default="/work/refs/llama.cpp/build/bin")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--gguf-type", choices=("f32", "f16"), default="f32",
                   help="llama-quantize's input (f16: MODEL's weights must be fp16 values)")
    p.add_argument("--cal-tokens", type=int, default=4096, help="calibration tokens at most")
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluation tokens at most")
    p.add_argument("--keep", action="store_true", help="keep the GGUF files")
    a = p.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    stem = os.path.join(a.dir, os.path.basename(a.model).split(".")[0])
    src, imatrix = f"{stem}.{a.gguf_type}.gguf", f"{stem}.imatrix"
    report = export_gguf(a.model, src, a.gguf_type, a.tokenizer, True, threads=a.threads)
    if a.gguf_type == "f16":
        inexact = [name for name, k in report.kinds.items() if k.max_err]
        if inexact:
            sys.exit(f"{a.model}: {', '.join(inexact)} are not fp16 values: use --gguf-type f32")
    with Model(src, tokenizer=a.tokenizer, threads=a.threads) as m:
        vocab = m.spec.vocab_size
    tok = load_tokenizer(a.tokenizer, vocab_size=vocab)
    t0 = time.perf_counter()
    with open(a.calibrate, encoding="utf-8", errors="replace") as f:
        imp, n_cal = importance(src, f.read(), tok, max_tokens=a.cal_tokens, threads=a.threads)
    cal_seconds = time.perf_counter() - t0
    write_imatrix(imatrix, imp)
    quantize = os.path.join(a.llama_cpp, "llama-quantize")
    rows = []
    with Model(src, tokenizer=a.tokenizer, threads=a.threads, kv="f32") as ref:
        ids = ref.encode(read_text(a.eval), bos=False)[:a.eval_tokens]
        windows = text_windows(ids, ref.spec.seq_len, ref.spec.bos_id)
        for i, (label, calibrated, ours) in enumerate((
                ("llama.cpp", False, False), ("qllama", False, True),
                ("qllama --calibrate", True, True),
                ("llama.cpp --imatrix (qllama's matrix)", True, False))):
            out = f"{stem}.{a.type}.{i}.gguf"
            if ours:
                export_gguf(a.model, out, a.type, a.tokenizer, True, threads=a.threads,
                            importance=imp if calibrated else None)
            else:
                run([quantize, *(["--imatrix", imatrix] if calibrated else []), src, out,
                     FTYPES[a.type]])
            with Model(out, threads=a.threads, kv="f32") as cand:
                r = evaluate(ref, cand, windows, a.eval, weights=False)
            rows.append((label, os.path.getsize(out), r))
            print(f"{label}: KL {r.kl_mean:.5f}", file=sys.stderr, flush=True)
            if not a.keep:
                os.remove(out)
    if not a.keep:
        os.remove(src)
        os.remove(imatrix)
    print(f"{a.model}, {a.type}; importance matrix from {n_cal:,} tokens of {a.calibrate} "
          f"in {cal_seconds:.1f} s; evaluated on {rows[0][2].tokens:,} tokens of {a.eval}\n")
    print("| candidate | MB | KL mean (nats) | KL max | top-1 | top-5 | perplexity (ref → cand) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, size, r in rows:
        print(f"| {label} | {size / 1e6:.1f} | {r.kl_mean:.5f} | {r.kl_max:.3f} | "
              f"{100 * r.top1_agreement:.2f}% | {100 * r.top5_overlap:.2f}% | "
              f"{r.perplexity_reference:.4g} → {r.perplexity_candidate:.4g} |")


if __name__ == "__main__":
    main()
