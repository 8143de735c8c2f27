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
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            n = os.cpu_count() or 1
        return min(max(1, n), MAX_THREADS)
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
    core, so the governor watches, per model (the machine's load is not a session's),
    and compares the two choices by their mean time per token (a rare long stall is
    the cost, which a median would hide).
    - Decode calls (many and short) run trials: TRIAL_CALLS calls with the other
      choice, early on and now and then, keeping the faster. Failed trials back off,
      so that they take at most about TRIAL_SHARE of the time when nothing changes.
    - A call whose calling thread ran less than STALLED of its time waited on a
      thread that was not running (spinning at a join counts as running). One alone
      happens on an idle machine too (about one decode call in a hundred; a virtual
      CPU slow to wake), so it takes two in a row: two decode calls, and the next
      calls use one thread; two prefill blocks, and the next block is a trial of one
      thread, judged against them.
    - A trial is of one kind of call (decode or prefill) and only calls of that kind
      run it; a call of the other kind runs the current choice and ends the trial
      unjudged (it would otherwise pin the other kind's calls to the trial's choice).
    - On one thread, prefill blocks also run trials of all threads when the decode
      trials would (a prefill-only workload, such as an evaluation, has no decode
      calls to bring it back).
    """

    TRIAL_CALLS = 4        # decode calls per trial (and before the first one)
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
        self.trial = None                   # [choice, calls left, prefill?] while one runs
        self.stalls = {False: 0, True: 0}   # stalled calls in a row, per (prefill?)
        self.calls = 0
        self.backoff = 1
        self.next_trial = None              # clock time when the next decode trial may start

    def threads(self, tokens: int = 1) -> int:
        """The thread count for a call of `tokens` tokens."""
        if self.trial and self.trial[2] == (tokens > 1):
            return self.trial[0]
        return self.current

    def record(self, threads: int, seconds: float, cpu_seconds: float, tokens: int = 1) -> None:
        """A call of `tokens` tokens with `threads` took `seconds`, of which the calling
        thread ran `cpu_seconds`."""
        if self.max == 1:
            return
        prefill = tokens > 1
        history = self.recent[(prefill, threads)]
        history.append(seconds / tokens)
        del history[:-8]
        self.calls += 1  # the first call faults the mapped weights in: its waits are not stalls
        stalled = threads > 1 and cpu_seconds < self.STALLED * seconds and self.calls > 1
        now = self.clock()
        if self.trial:
            if self.trial[2] == prefill:
                self.trial[1] -= 1
                if self.trial[1] == 0 or stalled:
                    self._decide(now, seconds, stalled)
                return
            self.trial = None  # a call of the other kind: that trial ends unjudged
        self.stalls[prefill] = self.stalls[prefill] + 1 if stalled else 0
        if prefill:
            if self.stalls[True] >= 2 and self.current == self.max:  # the next block: one
                del history[:-2]                                      # thread, judged against
                self.trial = [1, 1, True]                             # the stalled ones
                self.trial_start = now
            elif (self.current != self.max and self.next_trial is not None
                  and now >= self.next_trial):  # on one thread: a block of all threads
                self.trial = [self.max, 1, True]
                self.trial_start = now
            return
        if self.stalls[False] >= 2 and self.current == self.max:  # a neighbour took a core
            self.current = 1
            self._schedule(now, seconds)
        elif self.next_trial is None:  # the first trial once a few calls have been timed
            if len(history) >= self.TRIAL_CALLS:
                self._start(now)
        elif now >= self.next_trial:
            self._start(now)

    def _start(self, now: float) -> None:
        self.trial = [1 if self.current == self.max else self.max, self.TRIAL_CALLS, False]
        self.trial_start = now

    def _decide(self, now: float, last: float, stalled: bool) -> None:
        other, left, prefill = self.trial
        calls = (1 if prefill else self.TRIAL_CALLS) - left
        tried = _mean(self.recent[(prefill, other)][-calls:])
        kept = _mean(self.recent[(prefill, self.current)])
        switched = not stalled and left == 0 and kept is not None and tried <= self.BETTER * kept
        if switched:
            self.current, self.backoff = other, 1
        elif not prefill or other == self.max:
            self.backoff = min(2 * self.backoff, self.MAX_BACKOFF)
        self.trial = None
        if prefill and other == 1:
            if switched:  # decode's trials start from this evidence, at their usual cost
                self._schedule(now, _mean(self.recent[(True, self.max)]) * 32)
        else:
            self._schedule(now, now - self.trial_start + last)

    def _schedule(self, now: float, cost: float) -> None:
        """The next decode trial after a gap in which `cost` (a trial's) is TRIAL_SHARE."""
        self.next_trial = now + max(self.MIN_GAP, cost / self.TRIAL_SHARE) * self.backoff


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None
