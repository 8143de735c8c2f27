"""`qllama quantize IN OUT`: the streaming quantizer (quant.pipeline) with a
progress bar on a terminal and a summary table."""
from __future__ import annotations

import sys

from ..formats import llama2c
from ..formats.llama2c import Q80
from ..quant.pipeline import Report, quantize_file
from ..threads import add_threads_argument
from .console import console, fmt_bytes, progress_bar


def kinds_table(title: str, kinds: dict):
    """A table of tensor kinds (quant.pipeline.KindStats): shape, count, encoding, error."""
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
        f"{report.src} (version {report.src_version}, {fmt_bytes(report.in_bytes)}) → "
        f"{report.dst} (version 2, {fmt_bytes(report.out_bytes)}, "
        f"{report.in_bytes / report.out_bytes:.2f}× smaller) in {report.seconds:.2f} s, "
        f"{report.mb_per_s:,.0f} MB/s, {report.threads} thread(s)", highlight=False)


def run(args) -> int:
    with progress_bar("quantizing", args.quiet) as update:
        progress_cb = None
        if update is not None:
            total = 4 * llama2c.read_config(args.input).n_params()  # weight bytes to read
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
        "quantize", help="fp32 checkpoint (version 0/1) → int8 Q8_0 (version 2)",
        description="Quantize a llama2.c fp32 checkpoint (version 0 or 1, detected from the "
                    "file) into Q8_0 (version 2), byte-identical to llama2.c's export.py.")
    p.add_argument("input", metavar="IN", help="fp32 checkpoint (version 0 or 1)")
    p.add_argument("output", metavar="OUT", help="version 2 file to write")
    p.add_argument("--group-size", type=int, default=None, metavar="N",
                   help="values per scale; default: the largest power of two <= 64 that "
                        "divides dim and hidden_dim (an explicit N must divide both)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    add_threads_argument(p, "quantization")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar, note or summary")
    p.set_defaults(func=run)
