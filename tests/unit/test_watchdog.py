"""The watchdog's lag: the worst of the last ticks, or how overdue the current tick already is."""

from agent.testing import FakeClock
from agent.watchdog import WINDOW, Watchdog


class Recorder:
    def __init__(self) -> None:
        self.values: list[float] = []

    def set(self, value: float) -> None:
        self.values.append(value)


def test_the_lag_is_the_worst_of_the_recent_ticks_and_forgets_old_ones() -> None:
    gauge = Recorder()
    dog = Watchdog(gauge, FakeClock())
    dog.observe(0.003)
    dog.observe(1.5)
    assert dog.lag == 1.5 and gauge.values[-1] == 1.5
    for _ in range(WINDOW):
        dog.observe(0.001)
    assert dog.lag == 0.001


def test_a_tick_that_has_not_ended_yet_counts_as_it_goes() -> None:
    clock = FakeClock()
    dog = Watchdog(Recorder(), clock)
    dog._due = clock() + 0.25
    clock.advance(3.25)
    assert dog.lag == 3.0
