"""`qllama convert IN OUT --to v0|v1`: fp32 checkpoints between versions 0 and 1."""
from __future__ import annotations

from ..conversion.llama2c import convert_file


def run(args) -> int:
    r = convert_file(args.input, args.output, int(args.to[1:]), args.force)
    if not args.quiet:
        extra = " (freqs_cos/freqs_sin recomputed)" if r["recomputed_freqs"] else ""
        print(f"{args.input} (version {r['src_version']}) → {args.output} "
              f"(version {r['version']}, {r['out_bytes']:,} bytes) in {r['seconds']:.2f} s{extra}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="fp32 checkpoint → llama2.c version 0 or 1",
        description="Rewrite an fp32 llama2.c checkpoint (version 0 or 1, detected from the "
                    "file) as version 0 (legacy, with rotary tables) or version 1.")
    p.add_argument("input", metavar="IN", help="fp32 checkpoint (version 0 or 1)")
    p.add_argument("output", metavar="OUT", help="file to write")
    p.add_argument("--to", required=True, choices=("v0", "v1"), help="output version")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    p.set_defaults(func=run)
