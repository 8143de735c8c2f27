"""`qllama quantize IN OUT`: the streaming quantizer (conversion.llama2c) with a
progress bar on a terminal and a summary table; with OUT.gguf, a GGUF file of
`--type` (interop.gguf_export, llama.cpp's quantization types and mixtures). IN is a
llama2.c fp32 file, a Hugging Face folder (GGUF output) or an F32/F16/BF16 GGUF file."""
from __future__ import annotations

import os
import sys
import time

from ..conversion.llama2c import quantize_file
from ..conversion.report import Report
from ..conversion.sources import GGUFSource, refuse_quantized, refuse_tokenizer
from ..errors import UsageError
from ..formats import hf, is_gguf, llama2c
from ..formats.llama2c import Q80
from ..io.atomic import check_output_path
from ..threads import add_threads_argument
from .console import console, fmt_bytes, progress_bar

GGUF_TYPES = ("q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")
CALIBRATED = ("q4_k_m", "q5_k_m", "q6_k")  # the types whose fit an importance matrix weights
CALIBRATED_TYPES = ("Q4_K", "Q5_K", "Q6_K")  # the GGUF tensor types it weights
CALIBRATION_LIMIT = 16 << 20  # bytes of text; the forward pass reads its first 4096 tokens


def kinds_table(title: str, kinds: dict):
    """A table of tensor kinds (conversion.report.KindStats): shape, count, encoding, error."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("tensor")
    table.add_column("shape", justify="right")
    table.add_column("count", justify="right")
    table.add_column("encoding")
    table.add_column("max |q·s − w|", justify="right")
    for name, k in kinds.items():
        err = f"{k.max_err:.3g}" if k.encoding == Q80 else "(fp32 copy)"
        table.add_row(name, "×".join(map(str, k.shape)), str(k.count),
                      "Q8_0" if k.encoding == Q80 else "fp32", err)
    return table


def print_report(report: Report, console) -> None:
    c = report.config
    console.print(kinds_table(f"{report.dst}: Q8_0, group size {c.group_size}", report.kinds))
    console.print(
        f"{report.src} ({report.source}, {fmt_bytes(report.in_bytes)}) → "
        f"{report.dst} (version 2, {fmt_bytes(report.out_bytes)}, "
        f"{report.in_bytes / report.out_bytes:.2f}× smaller) in {report.seconds:.2f} s, "
        f"{report.mb_per_s:,.0f} MB/s, {report.threads} thread(s)", highlight=False)


def run_gguf(args) -> int:
    from ..interop.gguf_export import export_gguf
    from .export import print_gguf_report
    if args.group_size is not None:
        raise UsageError("--group-size is for llama2.c version 2 output; a GGUF file's "
                         "blocks are its --type's")
    folder = os.path.isdir(args.input)
    if not folder and is_gguf(args.input):
        refuse_tokenizer(args.input, args.tokenizer)  # before a --calibrate pass
        with GGUFSource(args.input) as source:
            refuse_quantized(source)
    elif not folder and llama2c.read_config(args.input).version == 2:
        raise UsageError(f"{args.input}: already quantized (version 2); quantize reads fp32 "
                         "files (versions 0 and 1); `qllama export --to gguf` converts "
                         "a version 2 file to GGUF's Q8_0")
    importance = None
    if args.calibrate is not None:
        check_output_path(args.output, args.force, (args.input,))  # before the long pass
        importance = calibrate(args, folder)
    with progress_bar("quantizing", args.quiet) as update:
        report = export_gguf(args.input, args.output, args.type or "q8_0", args.tokenizer,
                             args.force, update, threads=args.threads, importance=importance)
    if importance is not None and not any(t in CALIBRATED_TYPES for t in report.types):
        # rows too short for a k-quant's 256-value blocks fell back to other types
        report.notes.append("--calibrate changed nothing: no tensor was written as a k-quant "
                            "(their rows are not multiples of 256 values)")
    if not args.quiet:
        print_gguf_report(report)
    return 0


def calibrate(args, folder: bool) -> dict:
    """The importance matrix of IN over the --calibrate text (quant.imatrix)."""
    from ..conversion.sources import resolve_tokenizer
    from ..io.inputs import read_bounded
    from ..quant.imatrix import importance
    from ..tokenizer import from_gguf, load_tokenizer
    if args.type not in CALIBRATED:
        raise UsageError(f"--calibrate weights the k-quants' fit: --type {', '.join(CALIBRATED)}")
    if not folder and is_gguf(args.input):
        with GGUFSource(args.input) as source:  # its own vocabulary (export_gguf refuses -z)
            tok = from_gguf(source.model)
    else:
        tok_path = resolve_tokenizer(args.input, args.tokenizer)
        if not tok_path:
            raise UsageError(f"{args.input}: --calibrate needs a tokenizer: pass one with -z")
        config = hf.read_config(args.input) if folder else llama2c.read_config(args.input)
        tok = load_tokenizer(tok_path, vocab_size=config.vocab_size)
    text = read_bounded(args.calibrate, CALIBRATION_LIMIT, "a calibration text", UsageError)
    # a folder's fp32 import goes beside OUT (import_hf checks the space for it)
    t0 = time.perf_counter()
    imp, n = importance(args.input, text.decode("utf-8", errors="replace"), tok,
                        threads=args.threads,
                        scratch=os.path.dirname(os.path.abspath(args.output)))
    if not args.quiet:  # the summary's time is the quantizing's alone
        print(f"qllama: note: importance of each matrix's inputs from {n:,} positions of "
              f"{args.calibrate} (its tokens, each window from BOS) in "
              f"{time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return imp


def run(args) -> int:
    if args.output.endswith(".gguf"):
        return run_gguf(args)
    if os.path.isdir(args.input):
        raise UsageError(f"{args.input}: a folder; `qllama import` writes a Hugging Face "
                         "folder as llama2.c version 1 or 2, and quantize takes one only "
                         "for an OUT ending in .gguf")
    if args.type is not None or args.tokenizer is not None or args.calibrate is not None:
        raise UsageError(f"--type, -z and --calibrate are for a GGUF output: {args.output} "
                         "does not end in .gguf (without them quantize writes llama2.c "
                         "version 2, Q8_0)")
    with progress_bar("quantizing", args.quiet) as update:
        progress_cb = None
        if update is not None:
            if is_gguf(args.input):
                with GGUFSource(args.input) as source:
                    config = source.config
            else:
                config = llama2c.read_config(args.input)
            total = 4 * config.n_params()  # weight bytes to read
            progress_cb = lambda n: update(n, total)  # noqa: E731
        report = quantize_file(args.input, args.output, args.group_size, args.force,
                               args.threads, progress_cb)
    if report.note and not args.quiet:
        print(f"qllama: note: {report.note}", file=sys.stderr)
    if not args.quiet:
        print_report(report, console())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quantize", help="fp32 checkpoint (version 0/1) → int8 Q8_0 (version 2) or GGUF",
        description="Quantize a llama2.c fp32 checkpoint (version 0 or 1, detected from the "
                    "file) or an F32/F16/BF16 GGUF file into Q8_0 (version 2), byte-identical "
                    "to llama2.c's export.py; or, when OUT ends in .gguf, into a GGUF file of "
                    "--type with llama.cpp's bytes and tensor types (llama-quantize; a GGUF "
                    "input keeps its vocabulary and hyperparameters).")
    p.add_argument("input", metavar="IN", help="fp32 checkpoint (version 0 or 1) or F32/F16/"
                                               "BF16 GGUF file; for a GGUF output also a "
                                               "Hugging Face folder")
    p.add_argument("output", metavar="OUT", help="version 2 file, or .gguf file, to write")
    p.add_argument("--type", choices=GGUF_TYPES, default=None,
                   help="GGUF output only: the file type (default q8_0); q4_k_m and q5_k_m "
                        "mix in Q6_K as llama-quantize does")
    p.add_argument("-z", "--tokenizer", default=None,
                   help="GGUF output only: tokenizer.model or tokenizer.bin to embed; "
                        "default: beside IN (a GGUF IN carries its own)")
    p.add_argument("--calibrate", metavar="TEXT", default=None,
                   help="GGUF q4_k_m, q5_k_m, q6_k: weight the k-quants' "
                        "fit by the model's activations on this text (its first 4096 tokens), "
                        "as llama-quantize --imatrix (a Hugging Face folder is imported to "
                        "a temporary fp32 file beside OUT first)")
    p.add_argument("--group-size", type=int, default=None, metavar="N",
                   help="values per scale; default: the largest power of two <= 64 that "
                        "divides dim and hidden_dim (an explicit N must divide both)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    add_threads_argument(p, "quantization")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar, note or summary")
    p.set_defaults(func=run)
