#!/usr/bin/env python3
"""qllama and llama.cpp on the same GGUF file, teacher-forced on the same tokens.

    python tools/interop.py MODEL.gguf --llama-cpp ../refs/llama.cpp [--text FILE]
                            [--tokens 512] [--threads 2]

Both engines get the same token ids (BOS, then the text's tokens by the file's own
tokenizer, or random ids without --text), in one window of at most the model's
context; llama.cpp's logits come from tools/llama_logits.c, built here against that
llama.cpp (its llama.h and libllama). Reported: top-1 agreement, the mean and max
KL(llama.cpp || qllama) per position, and how many disagreements are near-ties. The two
engines round activations differently (llama.cpp's Q8 scales are fp16, ours fp32), so a
near-tie may go either way: the issue's bar is top-1 >= 99%, mean KL <= 1e-3.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import qllama  # noqa: E402


def build(llama_cpp: Path, out: Path) -> Path:
    lib = llama_cpp / "build" / "bin"
    subprocess.run(["cc", "-O2", "-o", str(out), str(REPO / "tools" / "llama_logits.c"),
                    f"-I{llama_cpp / 'include'}", f"-I{llama_cpp / 'ggml' / 'include'}",
                    f"-L{lib}", "-lllama", f"-Wl,-rpath,{lib}"], check=True)
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--llama-cpp", type=Path, required=True, help="a llama.cpp build folder")
    ap.add_argument("--text", type=Path, help="text to tokenize (default: random ids)")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    m = qllama.load(args.model, threads=args.threads)
    n = min(args.tokens, m.spec.seq_len)
    if args.text:
        ids = m.encode(args.text.read_text(), bos=True)[:n]
    else:
        rng = np.random.default_rng(0)
        ids = [m.spec.bos_id] + rng.integers(3, m.spec.vocab_size, n - 1).tolist()
    ids = np.asarray(ids, np.int32)
    ours = m.logits(ids)
    with tempfile.TemporaryDirectory() as d:
        exe = build(args.llama_cpp, Path(d) / "llama_logits")
        ids.tofile(Path(d) / "ids")
        subprocess.run([str(exe), str(args.model), str(Path(d) / "ids"), str(Path(d) / "out"),
                        str(args.threads)], check=True, stderr=subprocess.DEVNULL)
        theirs = np.fromfile(Path(d) / "out", np.float32).reshape(len(ids), -1)
    p, q = log_softmax(theirs), log_softmax(ours)
    kl = (np.exp(p) * (p - q)).sum(axis=-1)
    top1 = float(np.mean(theirs.argmax(-1) == ours.argmax(-1)))
    # a disagreement is a near-tie when the two candidates' logits, in llama.cpp's
    # numbers, are closer than the engines' largest logit difference at that position
    a, b = theirs.argmax(-1), ours.argmax(-1)
    rows = np.nonzero(a != b)[0]
    gap = theirs[rows, a[rows]] - theirs[rows, b[rows]]
    ties = int(np.sum(gap <= 2 * np.abs(theirs[rows] - ours[rows]).max(axis=-1)))
    print(f"{args.model.name}: {len(ids)} positions, top-1 agreement {100 * top1:.2f}%, "
          f"KL(llama.cpp || qllama) mean {kl.mean():.3g} max {kl.max():.3g} nats; "
          f"{ties} of {len(rows)} disagreements are near-ties (top-2 gap <= 2x the largest "
          f"logit difference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
