"""The loop between a row source and a sink, with its one read-ahead.

A row source (conversion.sources) gives, for each job (entry, r0, r1, ...) of a plan,
the rows r0..r1 as float32, read a thread ahead. A sink is what `write(job, rows)`
puts them into.
"""
from __future__ import annotations


def pump(source, plan: list, write, progress=None) -> None:
    """write(job, rows) for each job of `plan` in order, read a thread ahead by `source`;
    `progress(done, total)` after each, in bytes of float32."""
    total = 4 * sum((r1 - r0) * (e.numel // e.shape[0]) for e, r0, r1, *_ in plan)
    done = 0
    with source.chunks(plan) as chunks:
        for job, w in chunks:
            write(job, w)
            done += 4 * w.size
            if progress is not None:
                progress(done, total)
