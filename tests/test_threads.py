"""The thread governor's choices, on a simulated machine (a fake clock and call times)."""
from qllama.threads import ThreadGovernor


class Machine:
    """Decode calls whose time depends on the thread count and on whether a busy
    neighbour shares the cores."""

    def __init__(self, busy: bool):
        self.busy, self.now = busy, 0.0

    def call_time(self, threads: int) -> float:
        if threads == 1:
            return 1.0e-3
        return 5.0e-3 if self.busy else 0.6e-3  # 2 threads: faster idle, stalled when busy


def decode(gov: ThreadGovernor, machine: Machine, calls: int) -> float:
    """Run `calls` decode calls; returns their total time."""
    total = 0.0
    for _ in range(calls):
        n = gov.threads()
        dt = machine.call_time(n)
        machine.now += dt
        total += dt
        gov.record(n, dt)
    return total


def make(busy):
    m = Machine(busy)
    return ThreadGovernor(2, clock=lambda: m.now), m


def test_idle_machine_keeps_all_threads_at_small_cost():
    gov, m = make(busy=False)
    t = decode(gov, m, 20_000)
    assert gov.current == 2
    assert t <= 1.02 * 20_000 * 0.6e-3  # the trials of one thread cost under 2%


def test_busy_machine_settles_on_one_thread():
    gov, m = make(busy=True)
    t = decode(gov, m, 20_000)
    assert gov.current == 1
    assert t <= 1.1 * 20_000 * 1.0e-3  # within 10% of one thread from the start


def test_follows_the_load_both_ways():
    gov, m = make(busy=False)
    decode(gov, m, 2_000)
    m.busy = True
    decode(gov, m, 200)
    assert gov.current == 1  # the first slow call triggers a trial at once
    m.busy = False
    decode(gov, m, 30_000)  # trials back off, but still come
    assert gov.current == 2


def test_one_thread_is_left_alone():
    gov = ThreadGovernor(1, clock=lambda: 0.0)
    for _ in range(100):
        gov.record(1, 1e-3)
    assert gov.threads() == 1
