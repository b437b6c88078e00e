"""The check engine: one owned poller task per check, each run bounded by its timeout."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from agent.checks import Check, CheckContext, CheckFailure, CheckTimeout, load_type
from agent.config import CheckSpec
from agent.health import Health, Outcome, Result
from agent.logs import Scrubber, event
from agent.metrics import Metrics
from agent.units import format_duration

log = logging.getLogger("agent.engine")
MAX_MESSAGE = 512
CANCEL_GRACE = 1.0  # how long a timed-out run may take to clean up (kill its child) before it is left behind
APP_SAMPLE_INTERVAL = 5.0


class Engine:
    """Starts a poller per check, records results in Health, and on close cancels and awaits them all."""

    def __init__(self, health: Health, metrics: Metrics, ctx: CheckContext, scrub: Scrubber,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.health, self.metrics, self.ctx, self.scrub, self.clock = health, metrics, ctx, scrub, clock
        self.checks: dict[str, Check] = {s.name: load_type(s.type).create(s, ctx) for s in health.specs}
        self.pollers: dict[str, asyncio.Task[None]] = {}
        self.stuck: dict[str, asyncio.Task[str]] = {}  # runs that ignored cancellation, awaited at close
        self._app_task: asyncio.Task[None] | None = None
        self._on_result: list[Callable[[], None]] = []
        self._closed = False

    def start(self) -> None:
        """Start every poller (and the app sampler when an app is watched)."""
        for spec in self.health.specs:
            self.pollers[spec.name] = asyncio.create_task(self._poll(spec), name=f"check:{spec.name}")
        if self.ctx.app is not None:
            self._app_task = asyncio.create_task(self._sample_app(), name="app-sampler")
        self._after_result()

    def on_result(self, callback: Callable[[], None]) -> None:
        self._on_result.append(callback)

    def dead_pollers(self) -> list[str]:
        """Names of checks whose poller task has ended; empty while all are alive."""
        return [name for name, task in self.pollers.items() if task.done()]

    async def close(self) -> None:
        """Cancel every task this engine started, await them, and close the checks."""
        self._closed = True
        tasks: list[asyncio.Task[Any]] = [*self.pollers.values(), *self.stuck.values()]
        if self._app_task is not None:
            tasks.append(self._app_task)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CANCEL_GRACE * 2)
            for task in pending:
                event(log, logging.WARNING, f"task {task.get_name()} did not stop after cancellation; abandoning it")
        for check in self.checks.values():
            try:
                await asyncio.wait_for(check.close(), CANCEL_GRACE)
            except Exception as exc:  # noqa: BLE001 - closing must go on for the others
                event(log, logging.WARNING, f"closing a check failed: {type(exc).__name__}")

    async def _poll(self, spec: CheckSpec) -> None:
        check = self.checks[spec.name]
        # A small random offset so that many checks with one interval do not fire together.
        await asyncio.sleep(spec.initial_delay + random.uniform(0, min(spec.interval * 0.1, 0.25)))
        next_at = self.clock()
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
        message = self.scrub(" ".join(str(message).split()))[:MAX_MESSAGE]
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

    async def _sample_app(self) -> None:
        app = self.ctx.app
        while True:
            try:
                await app.refresh()
            except Exception as exc:  # noqa: BLE001 - sampling for metrics must not die
                log.debug("app sampling failed: %s", exc)
            await asyncio.sleep(APP_SAMPLE_INTERVAL)


def _consume(task: asyncio.Task[str]) -> None:
    """Retrieve a finished task's outcome so asyncio does not warn that it was never retrieved."""
    if not task.cancelled():
        task.exception()
