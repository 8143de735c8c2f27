"""`qllama tokenizer export|encode|decode|train`: the tokenizer on its own."""
from __future__ import annotations

import json
import os
import sys

from ..errors import UsageError
from ..threads import add_threads_argument
from ..tokenizer import export_bin, load_tokenizer
from ..tokenizer.base import utf8_decode
from .run import as_read


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tokenizer", help="export, inspect and train tokenizers",
        description="Tokenizers in SentencePiece (.model) or llama2.c (.bin) format, or "
                    "the vocabulary of a GGUF model; the format is detected from the file.")
    sub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")

    e = sub.add_parser("export", help="tokenizer.model → llama2.c tokenizer.bin",
                       description="Write a SentencePiece model as llama2.c's tokenizer.bin "
                                   "(byte-identical to llama2.c's own export).")
    e.add_argument("model", help="SentencePiece tokenizer.model")
    e.add_argument("-o", "--output", help="output path (default: MODEL with .bin suffix)")
    e.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    e.set_defaults(func=cmd_export)

    e = sub.add_parser("encode", help="text → ids and pieces",
                       description="Encode TEXT (or standard input, as is) to token ids.")
    e.add_argument("tokenizer", help="tokenizer.model, tokenizer.bin or a GGUF model")
    e.add_argument("text", nargs="?", help="text to encode (default: read standard input)")
    e.add_argument("--no-bos", dest="bos", action="store_false", help="do not prepend BOS")
    e.add_argument("--eos", action="store_true", help="append EOS")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.set_defaults(func=cmd_encode)

    e = sub.add_parser("decode", help="ids → text and pieces",
                       description="Decode token ids to text as SentencePiece does.")
    e.add_argument("tokenizer", help="tokenizer.model, tokenizer.bin or a GGUF model")
    e.add_argument("ids", nargs="+", help="token ids (separated by spaces or commas)")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.set_defaults(func=cmd_decode)

    e = sub.add_parser("train", help="train a BPE tokenizer with Llama 2's settings",
                       description="Train a SentencePiece BPE model with Llama 2's trainer and "
                                   "normaliser settings; writes PREFIX.model and PREFIX.bin.")
    e.add_argument("--input", nargs="+", required=True, metavar="FILE", help="text files")
    e.add_argument("--vocab-size", type=int, required=True, metavar="N")
    e.add_argument("--out", required=True, metavar="PREFIX", help="output path prefix")
    add_threads_argument(e, "trainer")
    e.add_argument("--input-sentence-size", type=int, default=200_000_000, metavar="N",
                   help="most sentences to sample from the input (Llama 2: 200000000)")
    e.add_argument("--exact-vocab", action="store_true",
                   help="fail instead of shrinking N to what a small corpus supports")
    e.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    e.add_argument("-v", "--verbose", action="store_true", help="show SentencePiece's log")
    e.set_defaults(func=cmd_train)


def cmd_export(args) -> int:
    out = args.output or os.path.splitext(args.model)[0] + ".bin"
    size = export_bin(args.model, out, force=args.force,
                      warn=lambda msg: print(f"qllama: warning: {msg}", file=sys.stderr))
    print(f"wrote {out} ({size} bytes)")
    return 0


def _pieces(tok, ids) -> list[str]:
    return [tok.piece(i) for i in ids]


def cmd_encode(args) -> int:
    tok = load_tokenizer(args.tokenizer)
    # decoded as SentencePiece decodes bytes (U+FFFD per invalid byte), argv's as run's
    text = utf8_decode(sys.stdin.buffer.read())[0] if args.text is None else as_read(args.text)
    ids = tok.encode(text, bos=args.bos, eos=args.eos)
    pieces = _pieces(tok, ids)
    if args.json:
        print(json.dumps({"tokenizer": args.tokenizer, "format": tok.format, "text": text,
                          "ids": ids, "pieces": pieces}, ensure_ascii=False))
        return 0
    print(" ".join(map(str, ids)))
    for i, p in zip(ids, pieces):
        print(f"{i:>8}  {p!r}")
    print(f"{len(ids)} tokens", file=sys.stderr)
    return 0


def _parse_ids(words) -> list[int]:
    ids = []
    for w in words:
        for part in w.replace(",", " ").split():
            try:
                ids.append(int(part))
            except ValueError:
                raise UsageError(f"{part!r} is not a token id (an integer)") from None
    return ids


def cmd_decode(args) -> int:
    tok = load_tokenizer(args.tokenizer)
    ids = _parse_ids(args.ids)
    text = tok.decode(ids)
    pieces = _pieces(tok, ids)
    if args.json:
        print(json.dumps({"tokenizer": args.tokenizer, "format": tok.format, "ids": ids,
                          "pieces": pieces, "text": text}, ensure_ascii=False))
        return 0
    for i, p in zip(ids, pieces):
        print(f"{i:>8}  {p!r}", file=sys.stderr)
    sys.stdout.write(text + "\n")
    return 0


def cmd_train(args) -> int:
    from ..tokenizer.train import train

    def warn(msg):
        print(f"qllama: warning: {msg}", file=sys.stderr)

    r = train(args.input, args.vocab_size, args.out, threads=args.threads,
              input_sentence_size=args.input_sentence_size, exact_vocab=args.exact_vocab,
              force=args.force, verbose=args.verbose, warn=warn)
    print(f"wrote {r['model']} and {r['bin']} ({r['vocab_size']} pieces)")
    return 0
