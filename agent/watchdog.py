"""The agent's own watchdog: how late its event loop wakes up, kept as a gauge and checked by /agent/livez."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Protocol

TICK = 0.25
WINDOW = 8  # ticks: the lag reported is the worst of the last two seconds


class GaugeLike(Protocol):
    def set(self, value: float) -> None: ...


class Watchdog:
    """Sleeps a fixed tick and measures how much later than asked the loop woke it."""

    def __init__(self, gauge: GaugeLike, clock: Callable[[], float] = time.monotonic) -> None:
        self.gauge, self.clock = gauge, clock
        self.recent: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.task: asyncio.Task[None] | None = None
        self._due: float | None = None  # when the current tick should end

    @property
    def lag(self) -> float:
        """The worst lag of the last few ticks, or how long the current tick is already overdue."""
        worst = max(self.recent, default=0.0)
        return max(worst, self._overdue())

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="watchdog")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def observe(self, lag: float) -> None:
        self.recent.append(max(0.0, lag))
        self.gauge.set(self.lag)

    def _overdue(self) -> float:
        return 0.0 if self._due is None else max(0.0, self.clock() - self._due)

    async def _run(self) -> None:
        while True:
            self._due = self.clock() + TICK
            await asyncio.sleep(TICK)
            self.observe(self.clock() - self._due)
