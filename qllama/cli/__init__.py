"""The `qllama` command: one module per subcommand (run, serve, quantize, convert,
import, export, info, eval, demo, tokenizer), each registering itself here through `register(subparsers)`
and calling the library for its work. Errors become one line and exit status 1;
the library's warnings one line each."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings

from .. import __version__
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
    parser.add_argument("--version", action="version", version=f"qllama {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _name_parsers(parser)
    return parser


def _name_parsers(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command's parser as `command_parser` in its namespace, the innermost
    winning, so that main can show the usage of the command that was given."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.set_defaults(command_parser=command)
                _name_parsers(command)


def _intermixed(args: argparse.Namespace, given: list[str],
                unknown: list[str]) -> argparse.Namespace:
    """The command's own arguments parsed again with options between positionals
    (`tokenizer encode FILE --json TEXT`): argparse gives an optional positional its
    empty value before it reaches the option, then calls TEXT unrecognized. An
    argument still unknown, or one among the command's words (`tokenizer --json
    encode`), is an error with the command's usage."""
    command = args.command_parser
    path = command.prog.split()[1:]  # "qllama tokenizer encode" -> its words in argv
    at = 0
    for word in path:
        at = given.index(word, at) + 1
    if any(u in given[:at] for u in unknown):
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    ns = command.parse_intermixed_args(given[at:])
    for name, value in vars(args).items():  # the parents' own (command, ...)
        if not hasattr(ns, name):
            setattr(ns, name, value)
    return ns


def main(argv: list[str] | None = None) -> int:
    # a terminal or pipe that cannot show a character gets an escape, not a traceback
    with contextlib.suppress(AttributeError, ValueError):  # not a TextIOWrapper in-process
        sys.stdout.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would print the top-level usage, not the command's
        given = argv if argv is not None else sys.argv[1:]
        before = given.index(args.command) if args.command in given else 0
        if any(u in given[:before] for u in unknown) or not hasattr(args, "command_parser"):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args = _intermixed(args, given, unknown)
    try:
        # A model file truncated while mapped: one line, not a bus error and a core dump.
        with bus_errors_reported(), warnings.catch_warnings():
            warnings.simplefilter("always", QllamaWarning)
            warnings.showwarning = _show_warning
            return args.func(args) or 0
    except QllamaError as e:
        print(f"qllama: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # stdout's reader went away (`qllama run ... | head`): stop quietly, with the
        # status of a program a SIGPIPE ended, and let nothing flush into the closed pipe
        with contextlib.suppress(OSError, ValueError):  # not a real file in-process
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
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
