"""The agent's own watchdog: how late its event loop wakes up, kept as a gauge and checked by /agent/livez.

The loop measures itself rather than waking to be measured: the selector it waits in (`WatchedSelector`,
installed by `new_event_loop`) notes, at every wait, how long the loop ran callbacks since the last one (a
blocking call holds it that long) and how much later than asked the last wait returned (a paused or starved
process). An idle agent thus sleeps until there is something to do. The agent always runs on such a loop
(cli._run_loop); on another loop the watchdog measures nothing and says so (`measuring` is False).

The measurement runs inside the selector's `select`: an exception there would stop the event loop itself.
It is caught, the watchdog detaches (the loop goes on) and `on_failure` reports it (the daemon logs and counts
it as the `watchdog` task's failure, and /agent/livez fails from then on).
"""

from __future__ import annotations

import asyncio
import collections
import selectors
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

SLOT, SLOTS = 0.5, 4  # the lag reported is the worst of the current half second and the four before: about 2 s


class GaugeLike(Protocol):
    def set_function(self, f: Callable[[], float]) -> None: ...


class WatchedSelector(selectors.DefaultSelector):  # DefaultSelector: the platform's best (epoll on Linux)
    """The platform's selector, reporting each iteration's lag to `on_lag` as the loop waits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.on_lag: Callable[[float, float], None] | None = None  # (lag, now)
        self.returned = clock()  # when the last wait ended: the loop has been running callbacks since
        self.waiting = False
        self.wakeups = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        start = self.clock()
        busy = start - self.returned
        self.waiting = True
        try:
            ready: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
        finally:
            self.waiting = False
            self.returned = end = self.clock()
        self.wakeups += 1
        late = end - start - timeout if timeout else 0.0
        if self.on_lag is not None:
            self.on_lag(busy if busy > late else late, end)
        return ready

    def running_for(self, now: float) -> float:
        """How long the current iteration has been running callbacks (0 while the loop waits)."""
        return 0.0 if self.waiting else max(0.0, now - self.returned)


_selectors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WatchedSelector] = weakref.WeakKeyDictionary()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose selector measures its lag (see the module's docstring)."""
    selector = WatchedSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _selectors[loop] = selector
    return loop


class Watchdog:
    """Keeps the worst recent lag of the running loop; the gauge reads it at scrape time."""

    def __init__(self, gauge: GaugeLike, clock: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[Exception], None] = lambda exc: None) -> None:
        self.clock, self.on_failure = clock, on_failure
        self.recent: collections.deque[list[Any]] = collections.deque(maxlen=SLOTS + 1)  # [slot index, worst lag]
        self.selector: WatchedSelector | None = None
        gauge.set_function(lambda: self.lag)

    @property
    def measuring(self) -> bool:
        """Whether the loop's lag is being measured: started on a watched loop, and not failed."""
        return self.selector is not None and self.selector.on_lag is not None

    @property
    def lag(self) -> float:
        """The worst lag of the last two seconds or so, or how long the current iteration already runs."""
        now = self.clock()
        first = int(now / SLOT) - SLOTS
        worst = max((lag for index, lag in self.recent if index >= first), default=0.0)
        return max(worst, self._ongoing(now))

    def start(self) -> None:
        """Measure the running loop, when it is a watched one (new_event_loop)."""
        self.selector = _selectors.get(asyncio.get_running_loop())
        if self.selector is not None:
            self.selector.on_lag = self._guarded

    def close(self) -> None:
        if self.selector is not None:
            self.selector.on_lag = None

    def _guarded(self, lag: float, now: float) -> None:
        try:
            self.observe(lag, now)
        except Exception as exc:  # noqa: BLE001 - raised inside select(), it would stop the loop itself
            self.close()
            self.on_failure(exc)

    def observe(self, lag: float, now: float | None = None) -> None:
        index = int((self.clock() if now is None else now) / SLOT)
        if self.recent and self.recent[-1][0] == index:
            if lag > self.recent[-1][1]:
                self.recent[-1][1] = lag
        else:
            self.recent.append([index, max(0.0, lag)])

    def _ongoing(self, now: float) -> float:
        selector = self.selector  # measuring: started on a watched loop, and not failed
        return selector.running_for(now) if selector is not None and selector.on_lag is not None else 0.0
