"""The thread governor's choices, on a simulated machine (a fake clock; call times and
the calling thread's running time as a busy neighbour would make them)."""
from qllama.threads import ThreadGovernor


class Machine:
    """Decode calls of a model that fits the caches: 2 threads are faster on an idle
    machine; beside a busy process, the calling thread waits at joins for the thread
    that is not running (its running time is a fifth of the call's)."""

    def __init__(self, busy: bool):
        self.busy, self.now = busy, 0.0

    def call(self, threads: int) -> tuple[float, float]:
        if threads == 1:
            return 1.0e-3, 1.0e-3
        return (5.0e-3, 1.0e-3) if self.busy else (0.6e-3, 0.6e-3)


def decode(gov: ThreadGovernor, machine: Machine, calls: int) -> float:
    """Run `calls` calls; returns their total time."""
    total = 0.0
    for _ in range(calls):
        n = gov.threads()
        wall, cpu = machine.call(n)
        machine.now += wall
        total += wall
        gov.record(n, wall, cpu)
    return total


def make(busy, **kw):
    m = Machine(busy)
    return ThreadGovernor(2, clock=lambda: m.now, **kw), m


def prefill(gov, m, tokens, one, idle, busy):
    """A block function: (wall, cpu) of a block on one thread, on all threads idle, and
    on all threads beside a busy neighbour; `block(busy)` runs one, returns its threads."""
    def block(is_busy):
        n = gov.threads(tokens)
        wall, cpu = one if n == 1 else (busy if is_busy else idle)
        m.now += wall
        gov.record(n, wall, cpu, tokens=tokens)
        return n
    return block


def test_idle_machine_keeps_all_threads_at_small_cost():
    gov, m = make(busy=False)
    t = decode(gov, m, 20_000)
    assert gov.current == 2
    assert t <= 1.02 * 20_000 * 0.6e-3  # the trials of one thread cost under 2%


def test_short_stalls_found_by_the_early_trial():
    """Beside a busy process, a small model's calling thread spins through the short
    waits: no stall shows, yet one thread is faster, and the first trial finds it."""
    gov, m = make(busy=True)
    m.call = lambda n: (1.0e-3, 1.0e-3) if n == 1 else (1.6e-3, 1.6e-3)
    t = decode(gov, m, 128)
    assert gov.current == 1 and t <= 1.05 * 128 * 1.0e-3


def test_busy_machine_settles_on_one_thread_at_once():
    gov, m = make(busy=True)
    decode(gov, m, 3 + ThreadGovernor.TRIAL_CALLS[False])
    assert gov.current == 1  # two stalled decode calls (after the first), then a trial
    t = decode(gov, m, 20_000)
    assert t <= 1.03 * 20_000 * 1.0e-3  # trials of 2 threads: one stalled call each


def test_follows_the_load_both_ways():
    gov, m = make(busy=False)
    decode(gov, m, 2_000)
    m.busy = True
    decode(gov, m, 2 + ThreadGovernor.TRIAL_CALLS[False])
    assert gov.current == 1
    m.busy = False
    decode(gov, m, 40_000)  # trials back off, but still come
    assert gov.current == 2


def test_prefill_blocks_trial_one_thread_after_two_stalls():
    """Prefill blocks run no periodic trials on all threads (one of one thread would
    cost an idle machine a whole block); two stalled blocks in a row make the next one
    a trial of one thread, kept if faster than the recent blocks' mean."""
    gov, m = make(busy=False)
    block = prefill(gov, m, 32, one=(18e-3, 18e-3), idle=(10e-3, 10e-3), busy=(30e-3, 10e-3))
    for _ in range(50):  # an idle machine: nothing stalls, all threads
        block(False)
    assert gov.trial is None and gov.current == 2
    used = [block(True) for _ in range(100)]  # a neighbour: stalled blocks, then one thread
    assert gov.current == 1 and used[-10:] == [1] * 10
    assert used.index(1) == 2  # the trial came right after the first two stalls
    gov, m = make(busy=False)
    for wall, cpu in [(10e-3, 10e-3)] * 2 + [(30e-3, 10e-3)] * 2:
        gov.record(gov.threads(32), wall, cpu, tokens=32)
    gov.record(1, 40e-3, 40e-3, tokens=32)  # slower: all threads stay
    assert gov.current == 2


def test_the_first_calls_may_wait():
    """A model's first calls fault its mapped weights in (worker threads in the
    kernel, the calling thread waiting): not a neighbour's doing. (Two stalled blocks
    in a row would start a trial: the first one must not count.)"""
    gov, _ = make(busy=False)
    gov.record(2, 40e-3, 10e-3, tokens=8)
    gov.record(2, 40e-3, 10e-3, tokens=8)
    assert gov.threads(8) == 2 and gov.trial is None


def test_a_trial_runs_only_calls_of_its_kind():
    """A prefill trial left pending by the prompt's last blocks must not pin the
    decode calls that follow to one thread, nor a decode trial the next prompt."""
    gov, m = make(busy=False)
    for wall, cpu in ((10e-3, 10e-3), (30e-3, 10e-3), (30e-3, 10e-3)):  # 2 stalled blocks
        gov.record(gov.threads(64), wall, cpu, tokens=64)
    assert gov.threads(64) == 1  # the next block would be the trial
    t = decode(gov, m, 1_000)
    assert gov.current == 2 and t <= 1.03 * 1_000 * 0.6e-3
    gov, m = make(busy=False)
    decode(gov, m, 5)
    assert gov.trial is not None and gov.threads() == 1  # a decode trial of one thread
    assert gov.threads(64) == 2  # a prompt arriving now runs all threads
    gov.record(2, 10e-3, 10e-3, tokens=64)
    assert gov.trial is None


def test_prefill_only_work_returns_to_all_threads():
    """An evaluation (prefill blocks only) that a passing neighbour moved to one thread
    goes back to all threads once the neighbour has gone."""
    gov, m = make(busy=False)
    block = prefill(gov, m, 64, one=(30e-3, 30e-3), idle=(18e-3, 18e-3), busy=(60e-3, 20e-3))
    for busy in [False] * 10 + [True] * 100:
        block(busy)
    assert gov.current == 1
    used = [block(False) for _ in range(2_000)]
    assert gov.current == 2 and used[-1000:].count(1) == 0


def test_one_stall_alone_is_not_enough():
    gov, m = make(busy=False)
    decode(gov, m, 100)
    gov.record(2, 5.0e-3, 1.0e-3)
    assert gov.current == 2
    decode(gov, m, 100)
    assert gov.current == 2


def test_one_thread_is_left_alone():
    gov = ThreadGovernor(1, clock=lambda: 0.0)
    for _ in range(100):
        gov.record(1, 1e-3, 1e-3)
    assert gov.threads() == 1


def test_frequent_short_stalls_that_still_pay_keep_all_threads():
    """A stall is a reason to try one thread, not a verdict: when all threads stay
    faster on average (3 calls in 10 stall, at twice the time), they are kept."""
    gov, m = make(busy=False)
    count = iter(range(10**9))

    def call(n):
        if n == 1:
            return 1.0e-3, 1.0e-3
        return (0.52e-3, 0.1e-3) if next(count) % 10 < 3 else (0.26e-3, 0.26e-3)

    m.call = call
    t = decode(gov, m, 50_000)
    assert gov.current == 2
    assert t <= 1.05 * 50_000 * (0.7 * 0.26e-3 + 0.3 * 0.52e-3)
