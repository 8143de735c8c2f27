"""Thread count: --threads, else QLLAMA_THREADS, else every core this process may use;
and, per session, how many of them each call uses (ThreadGovernor)."""
from __future__ import annotations

import os

from .errors import UsageError, whole_number

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
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            n = os.cpu_count() or 1
        return min(max(1, n), MAX_THREADS)
    if not whole_number(requested):
        raise UsageError(f"thread count must be a whole number, got {requested!r}")
    if not 1 <= requested <= MAX_THREADS:
        raise UsageError(f"thread count must be in 1..{MAX_THREADS}, got {requested}")
    return requested


def add_threads_argument(parser, what: str = "worker") -> None:
    """The --threads option every command shares."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"{what} threads (default: $QLLAMA_THREADS, else all cores)")


class ThreadGovernor:
    """How many threads a model's engine calls use: all of them, or one.

    On a machine with other busy processes, a matmul's threads are descheduled in
    turn and every join waits for the one that is not running: with one busy process
    on 2 cores, 2-thread decode of stories15M fell to 0.2x of 1-thread decode in the
    same condition (measured). No split of the work helps a thread that is not on a
    core, so the governor measures, per model (the machine's load is not a session's),
    each kind of call apart (decode calls; prefill blocks, per token):
    - A trial runs TRIAL_CALLS calls of one kind with the other choice and keeps it if
      their mean time is at most BETTER of the current choice's recent mean (means:
      a rare long stall is the cost, which a median would hide). It stops as soon as
      its calls so far already take longer than a successful trial could.
    - Decode trials come once a few calls are timed, then now and then, backing off
      while they fail, so that they take at most about TRIAL_SHARE of the time when
      nothing changes. Prefill runs them only when on one thread (a trial of one
      thread would cost an idle machine a whole block at half speed).
    - A call whose calling thread ran less than STALLED of its time waited on a
      thread that was not running (spinning at a join counts as running). One alone
      happens on an idle machine too (a virtual CPU slow to wake), so two in a row of
      a kind, on all threads, start a trial of one thread without waiting for the
      backed-off schedule (but within the TRIAL_SHARE budget).
    - Only calls of its kind run a trial; a call of the other kind ends it unjudged
      (it would otherwise pin the other kind's calls to the trial's choice).
    """

    TRIAL_CALLS = {False: 4, True: 1}  # calls per trial: decode, prefill (blocks are long)
    STALLED = 0.7          # the calling thread ran less than this share of a call
    TRIAL_SHARE = 0.02     # trials take at most this share of the time between them
    MIN_GAP = 0.05         # seconds between trials, at least
    MAX_BACKOFF = 16       # failed trials stretch the gap up to this factor
    BETTER = 0.9           # the other choice must take at most this share of the time

    def __init__(self, threads: int, clock=None):
        import time
        self.max = threads
        self.clock = clock or time.perf_counter
        self.current = threads
        # seconds per token of the last calls, per (prefill?, choice)
        self.recent = {(kind, n): [] for kind in (False, True) for n in (threads, 1)}
        self.trial = None      # while one runs: {"threads", "prefill", "left", "spent", "start"}
        self.stalls = {False: 0, True: 0}  # stalled calls in a row, per kind
        self.calls = 0
        self.backoff = 1
        self.next_trial = None  # clock time when the next trial may start
        self.stall_trial = 0.0  # ... and the next one a stall may start (no backoff)

    def threads(self, tokens: int = 1) -> int:
        """The thread count for a call of `tokens` tokens."""
        t = self.trial
        return t["threads"] if t and t["prefill"] == (tokens > 1) else self.current

    def record(self, threads: int, seconds: float, cpu_seconds: float, tokens: int = 1) -> None:
        """A call of `tokens` tokens with `threads` took `seconds`, of which the calling
        thread ran `cpu_seconds`."""
        if self.max == 1:
            return
        prefill = tokens > 1
        per_token = seconds / tokens
        history = self.recent[(prefill, threads)]
        history.append(per_token)
        del history[:-8]
        self.calls += 1  # the first call faults the mapped weights in: its waits are not stalls
        stalled = threads > 1 and cpu_seconds < self.STALLED * seconds and self.calls > 1
        self.stalls[prefill] = self.stalls[prefill] + 1 if stalled else 0
        now = self.clock()
        t = self.trial
        if t and t["prefill"] != prefill:
            self.trial = t = None  # a call of the other kind: that trial ends unjudged
        if t:
            t["left"] -= 1
            t["spent"] += per_token
            kept = _mean(self.recent[(prefill, self.current)])
            if t["spent"] > self.BETTER * kept * self.TRIAL_CALLS[prefill]:
                self._end(now, switch=False)  # already slower than a success allows
            elif t["left"] == 0:
                self._end(now, switch=True)
        elif (self.current == self.max and self.stalls[prefill] >= 2
              and now >= self.stall_trial):
            self._start(now, prefill)  # a neighbour may have taken a core
        elif self.next_trial is None:
            if not prefill and len(history) >= self.TRIAL_CALLS[False]:
                self._start(now, prefill)  # the first decode trial once a few calls are timed
        elif now >= self.next_trial and (not prefill or self.current != self.max):
            self._start(now, prefill)

    def _start(self, now: float, prefill: bool) -> None:
        self.trial = {"threads": 1 if self.current == self.max else self.max,
                      "prefill": prefill, "left": self.TRIAL_CALLS[prefill], "spent": 0.0,
                      "start": now}

    def _end(self, now: float, switch: bool) -> None:
        if switch:
            self.current, self.backoff = self.trial["threads"], 1
        else:
            self.backoff = min(2 * self.backoff, self.MAX_BACKOFF)
        # the next trial after a gap in which this one's cost is TRIAL_SHARE
        gap = max(self.MIN_GAP, (now - self.trial["start"]) / self.TRIAL_SHARE)
        self.next_trial = now + gap * self.backoff
        self.stall_trial = now + gap
        self.trial = None


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None
