"""The agent's lifecycle as an explicit state machine: one transition method, illegal moves refused."""

from __future__ import annotations

import enum
from collections.abc import Callable


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"


ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.RUNNING, Phase.DRAINING, Phase.STOPPED}),
    Phase.RUNNING: frozenset({Phase.DRAINING, Phase.STOPPED}),
    Phase.DRAINING: frozenset({Phase.STOPPING, Phase.STOPPED}),
    Phase.STOPPING: frozenset({Phase.STOPPED}),
    Phase.STOPPED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A move the lifecycle does not allow, such as stopped back to running."""


class Lifecycle:
    """Holds the current phase; `transition` is the only way to change it."""

    def __init__(self, clock: Callable[[], float],
                 on_change: Callable[[Phase, Phase, str], None] | None = None) -> None:
        self._clock = clock
        self._on_change = on_change
        self.phase = Phase.STARTING
        self.since = clock()

    def transition(self, to: Phase, reason: str) -> None:
        """Move to `to`, or raise IllegalTransition; every move is reported to `on_change`."""
        if to not in ALLOWED[self.phase]:
            raise IllegalTransition(f"cannot go from {self.phase.value} to {to.value}")
        before, self.phase, self.since = self.phase, to, self._clock()
        if self._on_change is not None:
            self._on_change(before, to, reason)

    def is_shutting_down(self) -> bool:
        return self.phase in (Phase.DRAINING, Phase.STOPPING, Phase.STOPPED)
