"""`qllama demo`: the whole tool in one run, with nothing to download.

Data flow, all inside one working folder (a temporary one, removed at the end,
or --dir):
the project's own documentation -> corpus.txt -> a BPE tokenizer trained with
Llama 2's settings -> a random-weight model of the stories15M shape with the
tokenizer's vocabulary, written as version 0 and version 1 -> quantized to Q8_0
(version 2) -> fp32 and int8 generate side by side with one seed -> `qllama
eval` of int8 against fp32. When the shared reference folder is present
(QLLAMA_SHARED, or `shared` beside the repository), the real trained
stories260K model is quantized and run the same way, beside the random one.
"""
from __future__ import annotations

import ast
import contextlib
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ..errors import UsageError
from ..threads import add_threads_argument

PACKAGE = Path(__file__).resolve().parents[1]  # qllama/
ROOT = PACKAGE.parent  # the repository, when qllama runs from a checkout
DEFAULT_VOCAB = 1024  # the docs (~16k characters of docstrings alone) support it with Llama 2's settings
SHAPES = ("stories15M", "tiny")
TOP_P = 0.9  # nucleus sampling for the side-by-side generations (run's default)
README_POINTER = ("README.md, section \"Real checkpoints\" (download a llama2.c model such as "
                  "stories15M.bin with its tokenizer, then `qllama quantize` and `qllama run`)")


# ---------------------------------------------------------------------------
# Inputs: the corpus and the optional shared folder


def docstrings(folder: Path) -> list[str]:
    """Module, class and function docstrings of every .py file under `folder`."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    out.append(doc)
    return out


def corpus_texts(root: Path = ROOT, package: Path = PACKAGE) -> list[tuple[str, str]]:
    """(source, text) pairs: README.md and docs/*.md of the checkout
    when present, and always the docstrings of qllama's own sources (installed
    with the package, so the demo works outside a checkout too)."""
    texts = []
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    for path in docs:
        if path.is_file():
            texts.append((str(path.relative_to(root)), path.read_text(encoding="utf-8")))
    texts.append(("qllama/*.py docstrings", "\n\n".join(docstrings(package))))
    return texts


def write_corpus(path: Path, texts: list[tuple[str, str]]) -> int:
    """Write the texts one paragraph-ish line each (SentencePiece reads lines and
    skips those over 4192 bytes); returns the characters written."""
    lines = []
    for _, text in texts:
        for line in text.splitlines():
            line = line.rstrip()
            while len(line.encode("utf-8")) > 4000:
                cut = line.rfind(" ", 0, 2000)
                cut = cut if cut > 0 else 2000
                lines.append(line[:cut])
                line = line[cut:].lstrip()
            if line.strip():
                lines.append(line)
    data = "\n".join(lines) + "\n"
    path.write_text(data, encoding="utf-8")
    return len(data)


def shared_folder() -> Path | None:
    """The reference folder, by the tests' rule: $QLLAMA_SHARED, else `shared` beside the
    repository. None when absent."""
    env = os.environ.get("QLLAMA_SHARED")
    folder = Path(env) if env else ROOT.parent / "shared"
    return folder if folder.is_dir() else None


# ---------------------------------------------------------------------------
# Steps


class Demo:
    def __init__(self, args, console, workdir: Path):
        self.args, self.console, self.dir = args, console, workdir

    def step(self, text: str) -> None:
        self.console.print(f"[bold cyan]▸[/] {text}", highlight=False)

    def note(self, text: str) -> None:
        self.console.print(f"  {text}", highlight=False)

    def progress(self, description: str, total: int):
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
        bar = Progress("  [progress.description]{task.description}", BarColumn(),
                       DownloadColumn(), TransferSpeedColumn(), console=self.console)
        task = bar.add_task(description, total=total)
        return bar, (lambda n: bar.update(task, completed=n))

    # -- tokenizer -------------------------------------------------------------
    def train_tokenizer(self):
        from ..tokenizer import load_tokenizer
        from ..tokenizer.train import train

        texts = corpus_texts()
        corpus = self.dir / "corpus.txt"
        n = write_corpus(corpus, texts)
        self.step(f"training a tokenizer (SentencePiece BPE, Llama 2's settings) on qllama's "
                  f"own documentation: {n:,} characters from " + ", ".join(s for s, _ in texts))
        t0 = time.perf_counter()
        notes = []
        result = train([corpus], self.args.vocab_size, str(self.dir / "tokenizer"),
                       threads=self.args.threads, force=True, warn=notes.append)
        for line in notes:
            self.note(f"note: {line}")
        tok = load_tokenizer(result["model"])
        self.note(f"{result['model']}: {tok.vocab_size} pieces (3 special, 256 byte "
                  f"fallback, {tok.vocab_size - 259} merges) in {time.perf_counter() - t0:.2f} s")
        return result["model"], tok

    # -- models ------------------------------------------------------------------
    def write_models(self, vocab_size: int):
        from ..formats.llama2c import expected_size
        from ..synth import PRESETS, write_random_model

        config = replace(PRESETS[self.args.shape], vocab_size=vocab_size)
        self.step(f"writing a random-weight model: {self.args.shape} shape (dim {config.dim}, "
                  f"hidden {config.hidden_dim}, {config.n_layers} layers, {config.n_heads} heads, "
                  f"seq_len {config.seq_len}) with the tokenizer's vocab_size {vocab_size}, "
                  f"{config.n_params():,} parameters")
        paths = {}
        for version in (0, 1):
            path = self.dir / f"random.v{version}.bin"
            t0 = time.perf_counter()
            write_random_model(path, config, seed=self.args.seed, version=version, force=True,
                               threads=self.args.threads)
            paths[version] = path
            self.note(f"{path}: version {version} (fp32), "
                      f"{expected_size(config.as_version(version)) / 1e6:.1f} MB in "
                      f"{time.perf_counter() - t0:.2f} s")
        return paths

    def write_int8(self, src: Path, dst: Path, label: str) -> Path:
        from ..conversion.llama2c import quantize_file

        self.step(f"quantizing {label}: {src.name} → {dst.name} (int8 Q8_0, version 2)")
        bar, update = self.progress("quantizing", os.path.getsize(src))
        with bar:
            report = quantize_file(src, dst, force=True, threads=self.args.threads,
                                   progress=update)
            update(os.path.getsize(src))  # headers and v0's rope tables are not quantized
        if report.note:
            self.note(f"note: {report.note}")
        self.note(f"{dst}: group size {report.config.group_size}, "
                  f"{report.out_bytes / 1e6:.2f} MB ({report.in_bytes / report.out_bytes:.2f}× "
                  f"smaller) in {report.seconds:.2f} s")
        return dst

    # -- generation and evaluation --------------------------------------------
    def generate(self, path: Path, tokenizer, prompt: str):
        from ..model import Model, Stats

        stats = Stats()
        with Model(path, tokenizer=tokenizer, threads=self.args.threads) as model:
            text = "".join(model.generate(prompt, steps=self.args.steps,
                                          temperature=self.args.temperature, top_p=TOP_P,
                                          seed=self.args.seed, stats=stats))
        return prompt + text, stats

    def side_by_side(self, title: str, fp32: Path, int8: Path, tokenizer, prompt: str):
        from ..diagnostics import peak_rss_mb

        self.step(f"generating from {title} with fp32 and int8, seed {self.args.seed}, "
                  f"{self.args.steps} positions")
        results = [self.generate(p, tokenizer, prompt) for p in (fp32, int8)]
        same = common_prefix(results[0][1].tokens, results[1][1].tokens)
        row = []
        for (text, stats), path in zip(results, (fp32, int8)):
            rate = stats.generated_tokens / stats.generate_seconds if stats.generate_seconds else 0
            row.append((text, f"{rate:,.0f} tok/s ({stats.generated_tokens} tokens), "
                              f"file {os.path.getsize(path) / 1e6:.2f} MB"))
        n = max(len(results[0][1].tokens), len(results[1][1].tokens))
        agree = "identical tokens" if same == n else f"same first {same}/{n} tokens"
        return row, agree, peak_rss_mb()

    def check_versions(self, v0: Path, v1: Path) -> None:
        """Version 0 and version 1 files of one seed hold the same weights: same logits."""
        import numpy as np

        from ..model import BOS, Model

        with Model(v0, threads=self.args.threads) as a, Model(v1, threads=self.args.threads) as b:
            ids = [BOS] + [(7 * i + 3) % a.config.vocab_size for i in range(15)]
            same = np.array_equal(a.logits(ids), b.logits(ids))
        self.note(("version 0 and version 1 give bit-identical logits" if same else
                   "warning: version 0 and version 1 logits differ"))

    def evaluate(self, fp32: Path, int8: Path):
        from ..evaluate import evaluate, sample_windows
        from ..model import Model

        with Model(fp32, threads=self.args.threads) as ref, \
                Model(int8, threads=self.args.threads) as cand:
            windows = sample_windows(ref, self.args.sample, seed=self.args.seed)
            return evaluate(ref, cand, windows,
                            f"{self.args.sample} tokens sampled from the fp32 model")


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def show_stories(console, rows) -> None:
    from rich.table import Table

    table = Table(title="same seed, same prompt: fp32 vs int8", title_justify="left",
                  show_lines=True, expand=console.is_terminal,
                  caption="same first k/n tokens: sampling picked the same token at the first "
                          "k of n positions (prompt included)", caption_justify="left")
    table.add_column("model", ratio=1)
    table.add_column("fp32", ratio=3)
    table.add_column("int8 (Q8_0)", ratio=3)
    for label, ((t32, s32), (t8, s8)), agree in rows:
        table.add_row(label, t32, t8)
        table.add_row(f"[dim]{agree}[/]", f"[dim]{s32}[/]", f"[dim]{s8}[/]")
    console.print(table)


def show_eval(console, label: str, report) -> None:
    console.print(f"  [bold]{label}[/]: {report.summary()}", highlight=False)
    worst = max(report.weights.items(), key=lambda kv: kv[1]["rel_rmse"], default=None)
    if worst:
        kind, e = worst
        console.print(f"    weights: worst kind {kind}, RMSE {e['rmse']:.2e} "
                      f"({100 * e['rel_rmse']:.2f}% of RMS), max |error| {e['max_abs']:.2e}",
                      highlight=False)


def run_demo(args, console) -> None:
    from ..sampling import check_sampling

    if args.steps < 2:
        raise UsageError(f"--steps must be at least 2, got {args.steps}")
    if args.sample < 1:
        raise UsageError(f"--sample must be at least 1, got {args.sample}")
    check_sampling(args.temperature, TOP_P, args.steps, args.seed)  # before any work
    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.dir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qllama-demo-")))
            where = f"the temporary folder {workdir} (removed at the end; --dir keeps the files)"
        else:
            workdir = Path(args.dir)
            if workdir.exists() and not workdir.is_dir():
                raise UsageError(f"--dir {workdir}: exists and is not a folder")
            workdir.mkdir(parents=True, exist_ok=True)
            where = f"{workdir} (files kept)"
        console.print(f"[bold]qllama demo[/]: everything happens in {where}; "
                      "nothing is downloaded.", highlight=False)
        demo = Demo(args, console, workdir)

        tok_path, tok = demo.train_tokenizer()
        paths = demo.write_models(tok.vocab_size)
        demo.check_versions(paths[0], paths[1])
        int8 = demo.write_int8(paths[1], workdir / "random.q80.bin", "the random model")
        rows = []
        row, agree, _ = demo.side_by_side("the random model", paths[0], int8, tok_path,
                                          args.prompt)
        rows.append((f"random weights, {args.shape} shape", row, agree))
        demo.step(f"evaluating int8 against fp32 (qllama eval, {args.sample} sampled tokens)")
        reports = [("random model", demo.evaluate(paths[1], int8))]

        shared = None if args.no_real else shared_folder()
        real = shared / "data" / "stories260K.bin" if shared else None
        real_tok = shared / "data" / "tok512.bin" if shared else None
        if real is not None and real.is_file() and real_tok.is_file():
            real8 = demo.write_int8(real, workdir / "stories260K.q80.bin",
                                  "the real trained stories260K model")
            row, agree, _ = demo.side_by_side(f"stories260K (real weights, {real})", real,
                                              real8, str(real_tok), args.real_prompt)
            rows.append(("real weights: stories260K", row, agree))
            reports.append(("stories260K", demo.evaluate(real, real8)))
        elif not args.no_real:
            console.print("  (no shared reference folder: set QLLAMA_SHARED to a folder holding "
                          "data/stories260K.bin and data/tok512.bin to see a real model too)",
                          highlight=False)

        from ..diagnostics import peak_rss_mb
        console.print()
        show_stories(console, rows)
        console.print("[bold]accuracy of int8 against fp32[/] (qllama eval):")
        for label, report in reports:
            show_eval(console, label, report)
        console.print(f"[bold]peak memory[/] of this whole run: {peak_rss_mb():.0f} MB "
                      f"(resident set); total time {time.perf_counter() - t_start:.1f} s",
                      highlight=False)
        console.print(
            "\n[bold yellow]The random model's weights are random[/], so its text is noise "
            "(pieces of the tokenizer's vocabulary strung together): it shows the pipeline "
            "works, not what a model says. What matters is how closely int8 follows fp32: "
            "the eval figures above (with sampling, one near-tie decided differently is "
            "enough for two texts to part ways). "
            f"For real checkpoints see {README_POINTER}.", highlight=False)


def run(args) -> int:
    from .console import console

    run_demo(args, console())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="see qllama work end to end, with nothing to download",
        description="Train a tokenizer on qllama's own docs, write a random-weight model "
                    "(stories15M shape) as version 0 and 1, quantize it, generate from fp32 "
                    "and int8 side by side, and evaluate int8 against fp32. Files live in a "
                    "temporary folder (removed afterwards) or in --dir.")
    p.add_argument("--dir", default=None,
                   help="keep the files in this folder (created if needed; the demo's own "
                        "files in it are overwritten)")
    p.add_argument("--shape", choices=SHAPES, default="stories15M",
                   help="random model shape (default stories15M; tiny is for quick tests)")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB,
                   help=f"tokenizer pieces to train (default {DEFAULT_VOCAB}; lowered, with a "
                        "note, when the docs cannot fill it)")
    p.add_argument("-n", "--steps", type=int, default=96,
                   help="positions to generate, prompt included (default 96)")
    p.add_argument("-i", "--prompt", default="The model", help="prompt for the random model")
    p.add_argument("--real-prompt", default="Once upon a time",
                   help="prompt for the real stories260K model")
    p.add_argument("-t", "--temperature", type=float, default=1.0,
                   help="sampling temperature (default 1.0; 0 = greedy, where fp32 and int8 "
                        "usually print the same text)")
    p.add_argument("-s", "--seed", type=int, default=42, help="seed for weights and sampling")
    p.add_argument("--sample", type=int, default=256,
                   help="tokens sampled for the accuracy evaluation (default 256)")
    p.add_argument("--no-real", action="store_true",
                   help="skip the real stories260K model even when the shared folder exists")
    add_threads_argument(p)
    p.set_defaults(func=run)
