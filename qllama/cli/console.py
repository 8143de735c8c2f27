"""Rich consoles for the commands' output.

On a terminal rich wraps text to the window. Written to a pipe or a file
(`| tee log`, CI logs, scripts that grep) rich would hard-wrap at 80 columns and cut
sentences and paths in two; there every line is printed whole, and tables take the
width their content needs.
"""
from __future__ import annotations

import contextlib

from rich.console import Console

UNWRAPPED_WIDTH = 10_000  # wide enough for any line qllama prints


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich exits 1 here; main stops quietly with SIGPIPE's status instead, as for
        # the commands that print without rich
        self.quiet = True
        raise BrokenPipeError


def console(stderr: bool = False) -> Console:
    c = _Console(stderr=stderr)
    if c.is_terminal:
        return c
    return _Console(stderr=stderr, soft_wrap=True, width=UNWRAPPED_WIDTH)


@contextlib.contextmanager
def progress_bar(description: str, quiet: bool = False, unit: str = "bytes"):
    """`update(done, total=None)` drawing a transient bar on stderr when it is a terminal
    (and not `quiet`); None otherwise. Counts bytes, or things named by `unit`."""
    err = console(stderr=True)
    if quiet or not err.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    counts = ((DownloadColumn(), TransferSpeedColumn()) if unit == "bytes"
              else (MofNCompleteColumn(), TextColumn(unit)))
    bar = Progress("[progress.description]{task.description}", BarColumn(), *counts,
                   TimeRemainingColumn(), console=err, transient=True)
    task = bar.add_task(description, total=None)
    bar.start()
    try:
        yield lambda done, total=None: bar.update(task, completed=done, total=total)
    finally:
        bar.stop()


def fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"
