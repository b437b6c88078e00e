"""The check engine: one owned poller task per check, each run bounded by its timeout."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.checks import Check, CheckContext, CheckFailure, CheckTimeout, load_type
from agent.config import CheckSpec
from agent.health import Health, Outcome, Result
from agent.logs import Scrubber, event
from agent.metrics import Metrics
from agent.units import format_duration, one_line

log = logging.getLogger("agent.engine")
MAX_MESSAGE = 512
CANCEL_GRACE = 1.0  # how long a timed-out run may take to clean up (kill its child) before it is left behind
RESTART_DELAY = 1.0  # before a poller that died is started again
DEATH_WINDOW, DEATHS_UNHEALTHY = 60.0, 3  # so many poller deaths in the window make the agent unhealthy


class Engine:
    """Owns one poller task per check: starts them, restarts one that dies, swaps them on reload, closes them."""

    def __init__(self, health: Health, metrics: Metrics, ctx: CheckContext, scrub: Scrubber,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.health, self.metrics, self.ctx, self.scrub, self.clock = health, metrics, ctx, scrub, clock
        self.specs: dict[str, CheckSpec] = {s.name: s for s in health.specs}
        self.checks: dict[str, Check] = {s.name: load_type(s.type).create(s, ctx) for s in health.specs}
        self.pollers: dict[str, asyncio.Task[None]] = {}
        self.stuck: dict[str, asyncio.Task[str]] = {}  # runs that ignored cancellation, awaited at close
        self.deaths: dict[str, list[float]] = {}
        self._restarts: set[asyncio.TimerHandle] = set()
        self._on_result: list[Callable[[], None]] = []
        self._closed = False

    def start(self) -> None:
        """Start every poller."""
        for spec in self.specs.values():
            self._spawn(spec)
        self._after_result()

    def on_result(self, callback: Callable[[], None]) -> None:
        self._on_result.append(callback)

    def dead_pollers(self) -> list[str]:
        """Checks whose poller is not running, or died too often lately; empty while all is well."""
        now = self.clock()
        return [name for name in self.specs
                if name not in self.pollers or self.pollers[name].done()
                or sum(1 for t in self.deaths.get(name, ()) if now - t < DEATH_WINDOW) >= DEATHS_UNHEALTHY]

    async def apply(self, specs: Sequence[CheckSpec]) -> tuple[list[str], list[str], list[str]]:
        """Swap in a reloaded set of checks: unchanged ones keep their poller and state.

        Returns the names (added, removed, changed). The cache is swapped before anything awaits,
        so probes never see half of a reload.
        """
        new = {s.name: s for s in specs}
        added = [n for n in new if n not in self.specs]
        removed = [n for n in self.specs if n not in new]
        changed = [n for n in new if n in self.specs and new[n] != self.specs[n]]
        old_checks = {n: self.checks.pop(n) for n in (*removed, *changed)}
        old_pollers = [self.pollers.pop(n) for n in (*removed, *changed) if n in self.pollers]
        for task in old_pollers:
            task.cancel()
        for name in (*added, *changed):
            self.checks[name] = load_type(new[name].type).create(new[name], self.ctx)
        self.specs = new
        self.health.apply(list(specs))
        self.metrics.apply(list(specs), gone=removed)
        for name in (*added, *changed):
            self.deaths.pop(name, None)
            self._spawn(new[name])
        if old_pollers:
            await asyncio.wait(old_pollers, timeout=CANCEL_GRACE * 2)
        for check in old_checks.values():
            await self._close_check(check)
        self._after_result()
        return added, removed, changed

    async def close(self) -> None:
        """Cancel every task this engine started, await them, and close the checks."""
        self._closed = True
        for handle in self._restarts:
            handle.cancel()
        tasks: list[asyncio.Task[Any]] = [*self.pollers.values(), *self.stuck.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CANCEL_GRACE * 2)
            for task in pending:
                event(log, logging.WARNING, f"task {task.get_name()} did not stop after cancellation; abandoning it")
        for check in self.checks.values():
            await self._close_check(check)

    async def _close_check(self, check: Check) -> None:
        try:
            await asyncio.wait_for(check.close(), CANCEL_GRACE)
        except Exception as exc:  # noqa: BLE001 - closing must go on for the others
            event(log, logging.WARNING, f"closing a check failed: {type(exc).__name__}")

    def _spawn(self, spec: CheckSpec) -> None:
        task = asyncio.create_task(self._poll(spec), name=f"check:{spec.name}")
        self.pollers[spec.name] = task
        task.add_done_callback(lambda done: self._poller_ended(spec, done))

    def _poller_ended(self, spec: CheckSpec, task: asyncio.Task[None]) -> None:
        """A poller only ends by cancellation; anything else is a bug, so restart it (and count it)."""
        if task.cancelled() or self._closed or self.pollers.get(spec.name) is not task:
            return
        exc = task.exception()
        self.deaths.setdefault(spec.name, []).append(self.clock())
        self.deaths[spec.name] = [t for t in self.deaths[spec.name] if self.clock() - t < DEATH_WINDOW]
        self.metrics.poller_restarts.labels(spec.name).inc()
        event(log, logging.ERROR, f"the poller of check {spec.name} died ({type(exc).__name__}: {exc}); "
              f"restarting it in {format_duration(RESTART_DELAY)}", check=spec.name)

        def restart() -> None:
            self._restarts.discard(handle)
            if not self._closed and self.specs.get(spec.name) is spec and self.pollers.get(spec.name) is task:
                self._spawn(spec)

        handle = asyncio.get_running_loop().call_later(RESTART_DELAY, restart)
        self._restarts.add(handle)

    async def _poll(self, spec: CheckSpec) -> None:
        check = self.checks[spec.name]
        # The first run comes soon (a small random offset), so the first answers are right quickly; the
        # second comes at a random phase of the interval, so that many checks with one interval spread out
        # over it instead of firing together and stalling the probes behind a burst of runs.
        await asyncio.sleep(spec.initial_delay + random.uniform(0, min(spec.interval * 0.1, 0.25)))
        next_at = self.clock() - spec.interval * random.uniform(0.0, 0.5)
        while True:
            result = await self.run_once(spec, check)
            self._record(spec, result)
            next_at += spec.interval
            now = self.clock()
            if next_at < now:  # a slow run: skip the missed ticks rather than bunch up
                next_at = now + spec.interval - (now - next_at) % spec.interval
            await asyncio.sleep(next_at - now)

    async def run_once(self, spec: CheckSpec, check: Check) -> Result:
        """Run a check once, bounded by its timeout; never raises (but for cancellation)."""
        start, wall = self.clock(), time.time()
        if spec.name in self.stuck:
            return self._result(Outcome.TIMEOUT, "the previous run is still stuck after its timeout", start, wall)
        task = asyncio.create_task(check.run(), name=f"run:{spec.name}")
        try:
            done, _ = await asyncio.wait({task}, timeout=spec.timeout)
        except asyncio.CancelledError:
            task.cancel()
            self._leave_behind(spec.name, task)
            raise
        if not done:
            task.cancel()
            finished, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
            if not finished:
                self._leave_behind(spec.name, task)
            else:
                _consume(task)
            return self._result(Outcome.TIMEOUT, f"timed out after {format_duration(spec.timeout)}", start, wall)
        exc = task.exception() if not task.cancelled() else asyncio.CancelledError()
        if exc is None:
            return self._result(Outcome.SUCCESS, task.result(), start, wall)
        if isinstance(exc, CheckTimeout):
            return self._result(Outcome.TIMEOUT, str(exc), start, wall)
        if isinstance(exc, CheckFailure):
            return self._result(Outcome.FAILURE, str(exc), start, wall)
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return self._result(Outcome.TIMEOUT, f"timed out: {exc}" if str(exc) else "timed out", start, wall)
        log.debug("check %s raised", spec.name, exc_info=exc)
        return self._result(Outcome.ERROR, f"{type(exc).__name__}: {exc}", start, wall)

    def _leave_behind(self, name: str, task: asyncio.Task[str]) -> None:
        """Keep a run that ignores cancellation owned, so close() can still await it."""
        self.stuck[name] = task

        def finished(done: asyncio.Task[str]) -> None:
            _consume(done)
            self.stuck.pop(name, None)

        task.add_done_callback(finished)

    def _result(self, outcome: Outcome, message: str, start: float, wall: float) -> Result:
        # Scrubbed as shown (on one line) and before the cut, which could leave a secret unrecognisable; the cut
        # keeps the start (what failed) and the end (a command's last words).
        message = one_line(self.scrub(one_line(str(message))), MAX_MESSAGE, tail=MAX_MESSAGE - MAX_MESSAGE // 4 - 5)
        return Result(outcome, message, max(0.0, self.clock() - start), self.clock(), wall)

    def _record(self, spec: CheckSpec, result: Result) -> None:
        flipped = self.health.record(spec.name, result)
        self.metrics.observe(spec, result, flipped)
        if flipped:
            state = self.health.states[spec.name]
            if result.ok:
                event(log, logging.INFO, f"check {spec.name} is now passing: {result.message}",
                      check=spec.name, state="passing", result=result.outcome.value)
            else:
                event(log, logging.WARNING,
                      f"check {spec.name} is now failing after {state.failures} failed runs: {result.message}",
                      check=spec.name, state="failing", result=result.outcome.value)
        self._after_result()

    def _after_result(self) -> None:
        for callback in self._on_result:
            callback()


def _consume(task: asyncio.Task[str]) -> None:
    """Retrieve a finished task's outcome so asyncio does not warn that it was never retrieved."""
    if not task.cancelled():
        task.exception()
