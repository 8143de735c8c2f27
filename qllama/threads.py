"""Thread count: --threads, else QLLAMA_THREADS, else every core this process may use."""
from __future__ import annotations

import os

from .errors import UsageError


def resolve_threads(requested: int | None = None) -> int:
    if requested is None:
        env = os.environ.get("QLLAMA_THREADS", "").strip()
        if env:
            try:
                requested = int(env)
            except ValueError:
                raise UsageError(f"QLLAMA_THREADS={env!r} is not a whole number") from None
    if requested is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    if requested < 1:
        raise UsageError(f"thread count must be at least 1, got {requested}")
    return requested
