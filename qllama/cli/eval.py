"""`qllama eval REFERENCE CANDIDATE`: what quantizing cost (qllama.evaluate), as a
table or JSON."""
from __future__ import annotations

import json

from ..evaluate import (
    DEFAULT_SAMPLE,
    TOP_K,
    Report,
    evaluate,
    read_text,
    sampled_windows,
    windows_from_text,
)
from ..threads import add_threads_argument
from .console import console, progress_bar
from .run import add_kv_argument


def _version(v: int | str) -> str:
    return "GGUF" if v == "gguf" else f"v{v} " + ("int8 Q8_0" if v == 2 else "fp32")


def print_report(report: Report, console) -> None:
    from rich.table import Table

    r = report
    console.print(f"reference  {r.reference} ({_version(r.reference_version)})\n"
                  f"candidate  {r.candidate} ({_version(r.candidate_version)})\n"
                  f"tokens     {r.source}", highlight=False)
    table = Table(title="next-token predictions",
                  title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("tokens evaluated", f"{r.tokens:,} in {r.windows} window(s)")
    table.add_row("KL(ref ‖ cand) mean", f"{r.kl_mean:.3e} nats")
    table.add_row("KL(ref ‖ cand) max", f"{r.kl_max:.3e} nats")
    table.add_row("top-1 agreement", f"{100 * r.top1_agreement:.2f}%")
    table.add_row(f"top-{TOP_K} overlap", f"{100 * r.top5_overlap:.2f}%")
    table.add_row("perplexity reference", f"{r.perplexity_reference:.4f}")
    table.add_row("perplexity candidate", f"{r.perplexity_candidate:.4f}")
    rel = 100 * r.perplexity_diff / r.perplexity_reference
    table.add_row("perplexity difference", f"{r.perplexity_diff:+.4f} ({rel:+.3f}%)")
    console.print(table)
    if r.weights:
        wt = Table(title="weights: candidate (dequantized) − reference", title_justify="left")
        wt.add_column("tensor kind")
        wt.add_column("values", justify="right")
        wt.add_column("RMSE", justify="right")
        wt.add_column("max |error|", justify="right")
        wt.add_column("RMSE / RMS(w)", justify="right")
        for kind, e in r.weights.items():
            wt.add_row(kind, f"{e['values']:,}", f"{e['rmse']:.3e}", f"{e['max_abs']:.3e}",
                       f"{100 * e['rel_rmse']:.3f}%")
        console.print(wt)
    console.print(f"evaluated in {r.seconds:.2f} s", highlight=False)


def run(args) -> int:
    from ..model import Model

    opts = dict(tokenizer=args.tokenizer, threads=args.threads, kv=args.kv)
    with Model(args.reference, **opts) as ref, Model(args.candidate, **opts) as cand:
        if args.text is not None:
            text = read_text(args.text)
            windows = windows_from_text(ref, text, "standard input" if args.text == "-"
                                        else args.text)
            total = sum(len(w.targets) for w in windows)
            source = f"text {args.text}"
        else:
            total = DEFAULT_SAMPLE if args.sample is None else args.sample
            windows = sampled_windows(ref, total, seed=args.seed)  # sampled as evaluated
            source = f"{total} tokens sampled from the reference (seed {args.seed})"
        with progress_bar("evaluating", unit="tokens") as update:
            report = evaluate(ref, cand, windows, source, weights=not args.no_weights,
                              progress=update and (lambda done: update(done, total)))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(report, console())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="accuracy of a quantized model against its original (KL, top-1, perplexity)",
        description="Run REFERENCE and CANDIDATE over the same tokens and report how far the "
                    "candidate's next-token distributions are from the reference's (KL "
                    "divergence, top-1 agreement, top-5 overlap, perplexity) and how far its "
                    "weights are (RMSE and max error per quantized tensor kind).")
    p.add_argument("reference", metavar="REFERENCE", help="usually the fp32 file (version 0/1)")
    p.add_argument("candidate", metavar="CANDIDATE",
                   help="usually its int8 file (version 2); any file of the same architecture")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="FILE", default=None,
                     help="evaluate on this UTF-8 text ('-' = stdin), cut into windows of "
                          "seq_len tokens each starting with BOS (needs the tokenizer)")
    src.add_argument("--sample", metavar="N", type=int, default=None,
                     help=f"evaluate on N tokens sampled from REFERENCE at temperature 1 "
                          f"(default {DEFAULT_SAMPLE}, used when --text is not given)")
    p.add_argument("--seed", type=int, default=1, help="seed for --sample (default 1)")
    p.add_argument("-z", "--tokenizer", default=None,
                   help="tokenizer for --text (default: beside REFERENCE, then the working "
                        "directory)")
    p.add_argument("--no-weights", action="store_true",
                   help="skip the per-tensor weight comparison")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_kv_argument(p)
    add_threads_argument(p)
    p.set_defaults(func=run)
