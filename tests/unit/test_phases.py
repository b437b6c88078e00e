"""The lifecycle: legal moves are reported, illegal ones refused."""

import pytest

from agent.runtime.phases import IllegalTransition, Lifecycle, Phase
from agent.testing import FakeClock


def test_the_normal_sequence_is_reported_move_by_move() -> None:
    seen: list[tuple[str, str]] = []
    life = Lifecycle(FakeClock(), lambda a, b, why: seen.append((a.value, b.value)))
    for phase in (Phase.RUNNING, Phase.DRAINING, Phase.STOPPING, Phase.STOPPED):
        life.transition(phase, "test")
    assert seen == [("starting", "running"), ("running", "draining"), ("draining", "stopping"), ("stopping", "stopped")]


@pytest.mark.parametrize(("path", "bad"), [
    ((), Phase.STOPPING),
    ((Phase.RUNNING, Phase.DRAINING), Phase.RUNNING),
    ((Phase.STOPPED,), Phase.RUNNING),
    ((Phase.RUNNING,), Phase.STARTING),
])
def test_illegal_moves_are_refused_and_change_nothing(path: tuple[Phase, ...], bad: Phase) -> None:
    life = Lifecycle(FakeClock())
    for phase in path:
        life.transition(phase, "test")
    before = life.phase
    with pytest.raises(IllegalTransition):
        life.transition(bad, "test")
    assert life.phase is before


def test_the_time_of_each_move_comes_from_the_clock() -> None:
    clock = FakeClock(5.0)
    life = Lifecycle(clock)
    clock.advance(2)
    life.transition(Phase.RUNNING, "test")
    assert life.since == 7.0
