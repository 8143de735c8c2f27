"""Thread count: --threads, else QLLAMA_THREADS, else every core this process may use."""
from __future__ import annotations

import os

from .errors import UsageError

# OpenMP threads spin this many iterations at a barrier before sleeping. libgomp's
# default (300000) lets a waiting thread burn its core for milliseconds: on a busy
# machine the thread it waits for is then descheduled and a 2-thread token takes
# 3-10x longer than a 1-thread one (measured). 10000 keeps the back-to-back regions
# of one token on the fast path (decode speed unchanged on an idle machine).
GOMP_SPINCOUNT = "10000"
MAX_THREADS = 1024


def configure_openmp() -> None:
    """Set libgomp's spin count unless the user chose a wait policy; must run before
    the first kernel module (and so libgomp) is loaded."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)


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
    if not 1 <= requested <= MAX_THREADS:
        raise UsageError(f"thread count must be in 1..{MAX_THREADS}, got {requested}")
    return requested


def add_threads_argument(parser, what: str = "worker") -> None:
    """The --threads option every command shares."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"{what} threads (default: $QLLAMA_THREADS, else all cores)")
