"""Thread count: --threads, else QLLAMA_THREADS, else every core this process may use;
and, per session, how many of them each call uses (ThreadGovernor)."""
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


class ThreadGovernor:
    """How many threads each engine call of one session uses.

    On a machine with other busy processes, a matmul's threads are descheduled in
    turn and every join waits for the one that is not running: with one busy process
    on 2 cores, 2-thread decode of stories15M fell to 0.2x of 1-thread decode in the
    same condition (measured). No split of the work helps a thread that is not on a
    core, so the governor measures instead: it times each call, runs a few calls with
    the other choice (all threads, or one) now and then, and keeps the faster. A call
    much slower than usual with all threads (a neighbour just woke) triggers a trial
    of one thread at once, and a trial call that stalls ends its trial; failed trials
    back off, so that trials cost at most about 2% of the time (TRIAL_SHARE) when
    nothing changes.
    """

    TRIAL_CALLS = 3        # calls per trial of the other choice
    TRIAL_SHARE = 0.02     # trials take at most this share of the time between them
    MIN_GAP = 0.05         # seconds between trials, at least
    MAX_BACKOFF = 16       # failed trials stretch the gap up to this factor
    SLOWDOWN = 2.0         # a call this many times the usual one triggers a trial
    BETTER = 0.9           # the other choice must take at most this share of the time

    def __init__(self, threads: int, clock=None):
        import time
        self.max = threads
        self.clock = clock or time.perf_counter
        self.current = threads
        self.recent = {threads: [], 1: []}  # seconds of the last decode calls per choice
        self.trial = None                   # [choice, calls left] while one runs
        self.backoff = 1
        self.next_trial = None              # clock time when the next trial may start

    def threads(self) -> int:
        return self.trial[0] if self.trial else self.current

    def record(self, threads: int, seconds: float) -> None:
        """One decode call (one token) run with `threads` took `seconds`. Prefill
        blocks are not recorded (their time per token is another quantity); they
        run with the current choice."""
        if self.max == 1:
            return
        usual = _median(self.recent[threads])
        history = self.recent[threads]
        history.append(seconds)
        del history[:-8]
        now = self.clock()
        if self.trial:
            kept = _median(self.recent[self.current])
            self.trial[1] -= 1
            if self.trial[1] == 0 or seconds > self.SLOWDOWN * kept:  # a stall: stop early
                self._decide(now)
            return
        first = self.next_trial is None  # the first trial right away: start well
        slow = threads == self.max and usual is not None and seconds > self.SLOWDOWN * usual
        if first or slow or now >= self.next_trial:
            self.trial = [1 if self.current == self.max else self.max, self.TRIAL_CALLS]
            self.trial_start = now

    def _decide(self, now: float) -> None:
        other = self.trial[0]
        tried = _median(self.recent[other][-(self.TRIAL_CALLS - self.trial[1]):])
        kept = _median(self.recent[self.current])
        if self.trial[1] == 0 and tried <= self.BETTER * kept:
            self.current, self.backoff = other, 1
        else:
            self.backoff = min(2 * self.backoff, self.MAX_BACKOFF)
        cost = now - self.trial_start
        self.next_trial = now + max(self.MIN_GAP, cost / self.TRIAL_SHARE) * self.backoff
        self.trial = None


def _median(values: list) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[len(s) // 2]
