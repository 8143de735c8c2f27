"""Encoder speed: our tokenizer.bin encoder against sentencepiece, same text, same run.

    python tools/bench_tokenizer.py [--bin tokenizer.bin --model tokenizer.model] [--text FILE]

Without --text, a deterministic mixed corpus (English prose, digits, accented
Latin, CJK, emoji) of about --chars characters is generated. Reports tokens/s
as the best of --repeat runs for one long text and for the same text line by
line (one encode call per line, like prompts), and checks the ids agree.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qllama.tokenizer import BinTokenizer, load_tokenizer  # noqa: E402

SHARED = Path(os.environ.get("QLLAMA_SHARED", ROOT.parent / "shared")) / "data"


def corpus(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ("once upon a time there was a little girl named Lily who loved to play outside "
             "in the park with her friends the sun was shining and birds were singing "
             "café naïve résumé Zürich 東京 日本語のテキスト 中文 данные 🙂 🎉").split()
    lines, n = [], 0
    while n < chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 24)))
        if rng.random() < 0.3:
            line += f" {rng.randint(0, 10 ** 6)}."
        lines.append(line)
        n += len(line) + 1
    return "\n".join(lines)


def best(fn, repeat: int) -> tuple[float, object]:
    result, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(SHARED / "tokenizer.bin"))
    ap.add_argument("--model", default=str(SHARED / "tokenizer.model"))
    ap.add_argument("--text", help="UTF-8 text file (default: generated corpus)")
    ap.add_argument("--chars", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--python", action="store_true",
                    help="also time the pure-Python reference encoder (slow)")
    args = ap.parse_args(argv)

    text = Path(args.text).read_text(encoding="utf-8") if args.text else corpus(args.chars)
    lines = text.splitlines()
    ours = load_tokenizer(args.bin)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=args.model)

    rows = []
    t, ids_sp = best(lambda: sp.encode(text), args.repeat)
    rows.append(("sentencepiece", "one text", len(ids_sp), t))
    t, ids = best(lambda: ours.encode(text, bos=False), args.repeat)
    rows.append(("qllama (Cython)", "one text", len(ids), t))
    agree = ids == ids_sp
    t, per_sp = best(lambda: [sp.encode(line) for line in lines], args.repeat)
    rows.append(("sentencepiece", f"{len(lines)} lines", sum(map(len, per_sp)), t))
    t, per = best(lambda: [ours.encode(line, bos=False) for line in lines], args.repeat)
    rows.append(("qllama (Cython)", f"{len(lines)} lines", sum(map(len, per)), t))
    agree = agree and per == per_sp
    if args.python:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from bpe_reference import ReferenceTable
        ref = BinTokenizer(args.bin, Path(args.bin).read_bytes(), merge_table=ReferenceTable)
        t, ids_ref = best(lambda: ref.encode(text, bos=False), 1)
        rows.append(("qllama (Python)", "one text", len(ids_ref), t))
        agree = agree and ids_ref == ids_sp

    print(f"text: {len(text):,} characters, {len(text.encode()):,} bytes, {len(lines):,} lines; "
          f"best of {args.repeat}")
    print(f"{'encoder':<18}{'input':<14}{'tokens':>10}{'seconds':>10}{'tokens/s':>14}")
    for name, what, n, t in rows:
        print(f"{name:<18}{what:<14}{n:>10,}{t:>10.4f}{n / t:>14,.0f}")
    print("ids identical to sentencepiece:", "yes" if agree else "NO")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
