"""`qllama export IN OUT --to hf|gguf`: a llama2.c file as a Hugging Face folder
(interop.hf_export) or a GGUF file for llama.cpp (interop.gguf_export)."""
from __future__ import annotations

import sys

from ..errors import UsageError
from ..interop.gguf_export import export_gguf
from ..interop.hf_export import export_hf
from .console import console, fmt_bytes, progress_bar


def run(args) -> int:
    with progress_bar("exporting", args.quiet) as update:
        if args.to == "hf":
            if args.type == "q8_0":
                raise UsageError("--to hf writes f32, f16 or bf16 weights (transformers has no "
                                 "Q8_0); use --to gguf for Q8_0")
            report = export_hf(args.input, args.output, args.type or "f32", args.tokenizer,
                               args.force, update)
        else:
            if args.type == "bf16":
                raise UsageError("--to gguf writes f32, f16 or q8_0")
            report = export_gguf(args.input, args.output, args.type, args.tokenizer,
                                 args.force, update)
    if args.quiet:
        return 0
    for note in report.notes:
        print(f"qllama: note: {note}", file=sys.stderr)
    out = console()
    if args.to == "gguf":
        from rich.table import Table
        table = Table(title=f"{report.dst}: GGUF, {report.kind}", title_justify="left")
        for column in ("tensor", "GGUF name", "count", "type"):
            table.add_column(column, justify="right" if column == "count" else "left")
        what = "max |written − input|"
        table.add_column(what + (" (requantized)" if report.src_version == 2 else ""),
                         justify="right")
        for name, k in report.kinds.items():
            table.add_row(name, k.gguf_name, str(k.count), k.qtype,
                          f"{k.max_err:.3g}" if k.max_err else "0 (exact)")
        out.print(table)
        extra = f", vocabulary from {report.tokenizer}"
    else:
        extra = f", {', '.join(report.files)}"
    out.print(f"{report.src} (version {report.src_version}) → {report.dst} "
              f"({fmt_bytes(report.out_bytes)}{extra}) in {report.seconds:.2f} s",
              highlight=False)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="llama2.c file → Hugging Face folder or GGUF (llama.cpp, ollama)",
        description="Export a llama2.c checkpoint (version 0, 1 or 2) as a Hugging Face folder "
                    "that transformers loads, or a GGUF file that llama.cpp loads; streamed.")
    p.add_argument("input", metavar="IN", help="llama2.c checkpoint")
    p.add_argument("output", metavar="OUT", help="folder (--to hf) or .gguf file (--to gguf)")
    p.add_argument("--to", required=True, choices=("hf", "gguf"), help="output format")
    p.add_argument("--type", choices=("f32", "f16", "bf16", "q8_0"), default=None,
                   help="weights: hf f32 (default), f16 or bf16; gguf f32, f16 or q8_0 "
                        "(default q8_0 for a version 2 input, else f32); norms stay f32")
    p.add_argument("-z", "--tokenizer", default=None,
                   help="tokenizer.model (hf, gguf) or tokenizer.bin (gguf); default: beside IN")
    p.add_argument("--force", action="store_true",
                   help="overwrite OUT (a folder only if it holds nothing but an export's files)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, notes or summary")
    p.set_defaults(func=run)
