"""`qllama export IN OUT --to hf|gguf`: a llama2.c file as a Hugging Face folder
(interop.hf_export) or a GGUF file for llama.cpp (interop.gguf_export)."""
from __future__ import annotations

import sys

from ..errors import UsageError
from ..interop.gguf_export import export_gguf
from ..interop.hf_export import export_hf
from ..threads import add_threads_argument
from .console import console, fmt_bytes, progress_bar


def run(args) -> int:
    with progress_bar("exporting", args.quiet) as update:
        if args.to == "hf":
            if args.type == "q8_0":
                raise UsageError("--to hf writes f32, f16 or bf16 weights (transformers has no "
                                 "Q8_0); use --to gguf for Q8_0")
            if args.threads is not None:
                raise UsageError("--threads is for --to gguf, which quantizes; --to hf "
                                 "converts on one thread")
            report = export_hf(args.input, args.output, args.type or "f32", args.tokenizer,
                               args.force, update)
        else:
            if args.type == "bf16":
                raise UsageError("--to gguf writes f32, f16 or q8_0")
            report = export_gguf(args.input, args.output, args.type, args.tokenizer,
                                 args.force, update, threads=args.threads)
    if args.quiet:
        return 0
    if args.to == "gguf":
        print_gguf_report(report)
        return 0
    for note in report.notes:
        print(f"qllama: note: {note}", file=sys.stderr)
    console().print(f"{report.src} ({report.source}) → {report.dst} "
                    f"({fmt_bytes(report.out_bytes)}, {', '.join(report.files)}) in "
                    f"{report.seconds:.2f} s", highlight=False)
    return 0


def print_gguf_report(report) -> None:
    """Notes on stderr; per tensor kind its types and what they cost, per GGUF type its
    tensors and size, on stdout (conversion.report.Report)."""
    from rich.table import Table
    for note in report.notes:
        print(f"qllama: note: {note}", file=sys.stderr)
    out = console()
    table = Table(title=f"{report.dst}: GGUF, {report.kind}", title_justify="left")
    for column in ("tensor", "GGUF name", "count", "type"):
        table.add_column(column, justify="right" if column == "count" else "left")
    what = "max |written − input|"
    table.add_column(what + (" (requantized)" if report.src_version == 2 else ""),
                     justify="right")
    table.add_column("RMS error / RMS weight", justify="right")
    for name, k in report.kinds.items():
        exact = not k.max_err
        table.add_row(name, k.gguf_name, str(k.count), k.qtype,
                      "0 (exact)" if exact else f"{k.max_err:.3g}",
                      "0" if exact else f"{k.rms_rel:.2%}")
    out.print(table)
    types = Table(title="per GGUF type", title_justify="left")
    for column in ("type", "tensors", "weights", "size", "bits / weight"):
        types.add_column(column, justify="left" if column == "type" else "right")
    for name, t in report.types.items():
        types.add_row(name, str(t.tensors), f"{t.weights:,}", fmt_bytes(t.nbytes),
                      f"{8 * t.nbytes / t.weights:.2f}")
    out.print(types)
    out.print(f"{report.src} ({report.source}) → {report.dst} "
              f"({fmt_bytes(report.out_bytes)}, vocabulary from {report.tokenizer}) in "
              f"{report.seconds:.2f} s, {report.threads} thread(s)", highlight=False)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="llama2.c file → Hugging Face folder or GGUF (llama.cpp, ollama)",
        description="Export a llama2.c checkpoint (version 0, 1 or 2) as a Hugging Face folder "
                    "that transformers loads, or a GGUF file that llama.cpp loads; streamed.")
    p.add_argument("input", metavar="IN", help="llama2.c checkpoint (--to gguf: also a GGUF "
                                               "file, its vocabulary and spec kept)")
    p.add_argument("output", metavar="OUT", help="folder (--to hf) or .gguf file (--to gguf)")
    p.add_argument("--to", required=True, choices=("hf", "gguf"), help="output format")
    p.add_argument("--type", choices=("f32", "f16", "bf16", "q8_0"), default=None,
                   help="weights: hf f32 (default), f16 or bf16; gguf f32, f16 or q8_0 "
                        "(default q8_0 for a version 2 input, else f32); norms stay f32")
    p.add_argument("-z", "--tokenizer", default=None,
                   help="tokenizer.model (hf, gguf) or tokenizer.bin (gguf); default: beside IN")
    p.add_argument("--force", action="store_true",
                   help="overwrite OUT (a folder only if it holds nothing but an export's files)")
    add_threads_argument(p, "--to gguf: quantization")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, notes or summary")
    p.set_defaults(func=run)
