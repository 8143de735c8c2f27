"""`qllama import SRC OUT`: a Hugging Face Llama folder → llama2.c version 1 or 2
(interop.hf_import), with a progress bar on a terminal and a summary."""
from __future__ import annotations

import sys

from ..errors import UsageError
from ..interop.hf_import import import_hf
from ..threads import add_threads_argument
from .console import console, fmt_bytes, progress_bar
from .quantize import kinds_table


def run(args) -> int:
    if args.output.endswith(".gguf"):  # it would be a llama2.c file under a GGUF name
        raise UsageError(f"{args.output}: import writes llama2.c files; for a GGUF file of a "
                         f"Hugging Face folder use `qllama quantize {args.source} "
                         f"{args.output} --type TYPE`")
    version = int(args.to[1:]) if args.to else (2 if args.output.endswith(".q80.bin") else 1)
    with progress_bar("importing", args.quiet) as update:
        report = import_hf(args.source, args.output, version, args.group_size, args.force,
                           args.threads, update)
    if args.quiet:
        return 0
    if report.note:
        print(f"qllama: note: {report.note}", file=sys.stderr)
    c = report.config
    out = console()
    if c.version == 2:
        out.print(kinds_table(f"{report.dst}: Q8_0, group size {c.group_size}", report.kinds))
    out.print(f"{report.src} ({report.source}, {fmt_bytes(report.in_bytes)}) → {report.dst} "
              f"(version {c.version}, {fmt_bytes(report.out_bytes)}) in {report.seconds:.2f} s, "
              f"{report.mb_per_s:,.0f} MB/s", highlight=False)
    for path in report.files:
        out.print(f"wrote {path}", highlight=False)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="Hugging Face Llama folder → llama2.c version 1 (fp32) or 2 (Q8_0)",
        description="Import a Hugging Face Llama checkpoint (config.json and safetensors, one "
                    "file or shards; fp32, fp16 or bf16) as a llama2.c file, streamed. A "
                    "tokenizer.model in SRC is written beside OUT with its tokenizer.bin.")
    p.add_argument("source", metavar="SRC", help="Hugging Face model folder")
    p.add_argument("output", metavar="OUT", help="llama2.c file to write")
    p.add_argument("--to", choices=("v1", "v2"), default=None,
                   help="output version: v1 (fp32) or v2 (Q8_0); default v2 when OUT ends in "
                        ".q80.bin, else v1")
    p.add_argument("--group-size", type=int, default=None, metavar="N",
                   help="v2: values per scale; default: the largest power of two <= 64 that "
                        "divides dim and hidden_dim")
    p.add_argument("--force", action="store_true",
                   help="overwrite OUT (and tokenizer files beside it) if they exist")
    add_threads_argument(p, "quantization")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, note or summary")
    p.set_defaults(func=run)
