"""Rich consoles for the commands' output.

On a terminal rich wraps text to the window. Written to a pipe or a file
(`| tee log`, CI logs, scripts that grep) rich would hard-wrap at 80 columns and cut
sentences and paths in two; there every line is printed whole, and tables take the
width their content needs.
"""
from __future__ import annotations

from rich.console import Console

UNWRAPPED_WIDTH = 10_000  # wide enough for any line qllama prints


def console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr)
    if c.is_terminal:
        return c
    return Console(stderr=stderr, soft_wrap=True, width=UNWRAPPED_WIDTH)
