"""The `qllama` command: one module per subcommand (run, serve, quantize, convert,
import, export, info, eval, demo, tokenizer), each registering itself here through `register(subparsers)`
and calling the library for its work. Errors become one line and exit status 1;
the library's warnings one line each."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from .._kernels.sigbus import bus_errors_reported
from ..errors import QllamaError, QllamaWarning

# Modules that provide a `register(subparsers)` function, in --help order.
COMMAND_MODULES = (
    "qllama.cli.quantize",
    "qllama.cli.convert",
    "qllama.cli.importer",
    "qllama.cli.export",
    "qllama.cli.info",
    "qllama.cli.run",
    "qllama.cli.serve",
    "qllama.cli.tokenizer",
    "qllama.cli.eval",
    "qllama.cli.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qllama",
        description="Quantize llama2.c checkpoints to int8 (Q8_0) and run them on CPUs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # A model file truncated while mapped: one line, not a bus error and a core dump.
        with bus_errors_reported(), warnings.catch_warnings():
            warnings.simplefilter("always", QllamaWarning)
            warnings.showwarning = _show_warning
            return args.func(args) or 0
    except QllamaError as e:
        print(f"qllama: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permissions, ... on a path the command chose
        where = f"{e.filename}: " if e.filename else ""
        print(f"qllama: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except MemoryError as e:
        print(f"qllama: error: out of memory{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qllama: interrupted", file=sys.stderr)
        return 130


def _show_warning(message, category, *_args, **_kwargs) -> None:
    print(f"qllama: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
