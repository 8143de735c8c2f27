"""The `qllama` command. Each subcommand lives in the module that does its work
and registers itself here through `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

from ._kernels.sigbus import bus_errors_reported
from .errors import QllamaError

# Modules that provide a `register(subparsers)` function, in --help order.
COMMAND_MODULES = (
    "qllama.quantize",
    "qllama.convert",
    "qllama.info",
    "qllama.generate",
    "qllama.tokenizer_cli",
    "qllama.evaluate",
    "qllama.demo",
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
        with bus_errors_reported():  # a model file truncated while mapped: not a core dump
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


if __name__ == "__main__":
    sys.exit(main())
