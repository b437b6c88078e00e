"""The watchdog's lag: the worst of the last two seconds, measured by the loop's own selector without a timer."""

import asyncio
import os
import time
from pathlib import Path

from agent.runtime.watchdog import SLOT, SLOTS, Watchdog, WatchedSelector, new_event_loop
from agent.testing import FakeClock, run_agent


class Recorder:
    def __init__(self) -> None:
        self.read: list[float] = []

    def set_function(self, f: object) -> None:
        self.f = f


def test_the_lag_is_the_worst_of_the_last_two_seconds_and_forgets_older_ones() -> None:
    clock = FakeClock()
    gauge = Recorder()
    dog = Watchdog(gauge, clock)
    dog.observe(0.003)
    dog.observe(1.5)
    clock.advance(SLOT)
    dog.observe(0.002)
    assert dog.lag == 1.5 and gauge.f() == 1.5  # type: ignore[operator]
    clock.advance(SLOT * SLOTS)
    dog.observe(0.001)
    assert dog.lag == 0.002
    clock.advance(SLOT * (SLOTS + 1))
    assert dog.lag == 0.0


def test_a_blocked_loop_is_measured_by_its_selector_while_and_after_it_blocks() -> None:
    loop = new_event_loop()
    dog = Watchdog(Recorder())
    seen: list[float] = []

    async def main() -> None:
        dog.start()
        assert isinstance(dog.selector, WatchedSelector) and dog.measuring
        await asyncio.sleep(0)
        time.sleep(0.3)  # a blocking call on the loop
        seen.append(dog.lag)  # read during the same iteration: it counts as it goes
        await asyncio.sleep(0)  # the loop waits again, and notes the iteration
        seen.append(dog.lag)
        dog.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert seen[0] >= 0.3 and seen[1] >= 0.3, seen


def test_a_loop_without_the_watched_selector_is_not_measured_and_says_so() -> None:
    async def main() -> None:
        dog = Watchdog(Recorder())
        dog.start()
        assert not dog.measuring and dog.lag == 0.0
        dog.close()

    asyncio.run(main())


def test_a_failing_measurement_detaches_and_is_reported_while_the_loop_goes_on() -> None:
    """An exception inside select() would stop the loop: the watchdog catches it, stops measuring, reports it."""
    loop = new_event_loop()
    failures: list[Exception] = []
    dog = Watchdog(Recorder(), on_failure=failures.append)

    def broken(lag: float, now: float | None = None) -> None:
        raise RuntimeError("broken watchdog")

    async def main() -> int:
        dog.start()
        dog.observe = broken  # type: ignore[method-assign]
        for _ in range(3):
            await asyncio.sleep(0.01)  # the loop waits, and measures, each time
        return 42

    try:
        assert loop.run_until_complete(main()) == 42
    finally:
        loop.close()
    assert [str(f) for f in failures] == ["broken watchdog"] and not dog.measuring


def voluntary_switches(pid: int) -> int:
    """Sleeps every thread of `pid` woke from so far."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            lines = Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines()
        except FileNotFoundError:
            continue  # a worker thread that ended since the listing woke no more
        total += sum(int(line.split()[1]) for line in lines if line.startswith("voluntary_ctxt_switches:"))
    return total


def test_an_idle_agent_does_not_wake_up() -> None:
    """The default config, nothing asked of it: a timer that woke it (the watchdog's old tick woke it 4 times
    a second) would show as voluntary context switches. Counted, not timed: a loaded machine only delays wakes."""
    with run_agent() as agent:
        agent.wait_status("/readyz", 200)
        time.sleep(0.5)  # the answer's own wake-ups are over
        before = voluntary_switches(agent.proc.pid)
        time.sleep(3.0)
        woke = voluntary_switches(agent.proc.pid) - before
        assert woke <= 2, f"the idle agent woke {woke} times in 3 s"
