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
from agent.logs import Scrubber, event
from agent.runtime.health import Health, Outcome, Result
from agent.runtime.metrics import Metrics
from agent.runtime.tasks import TaskKind, Tasks
from agent.units import format_duration, one_line

log = logging.getLogger("agent.engine")
MAX_MESSAGE = 512
CANCEL_GRACE = 1.0  # how long a timed-out run may take to clean up (kill its child) before it is left behind
RESTART_DELAY = 1.0  # before a poller that died is started again
DEATH_WINDOW, DEATHS_UNHEALTHY = 60.0, 3  # so many poller deaths in the window make the agent unhealthy


class Engine:
    """Owns one poller task per check: starts them, restarts one that dies, swaps them on reload, closes them."""

    def __init__(self, health: Health, metrics: Metrics, ctx: CheckContext, scrub: Scrubber, tasks: Tasks,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.health, self.metrics, self.ctx, self.scrub, self.clock = health, metrics, ctx, scrub, clock
        self.tasks = tasks
        self.specs: dict[str, CheckSpec[object]] = {s.name: s for s in health.specs}
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

    async def apply(self, specs: Sequence[CheckSpec[object]]) -> tuple[list[str], list[str], list[str]]:
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

    def _spawn(self, spec: CheckSpec[object], resume_at: float | None = None) -> None:
        task = self.tasks.start(self._poll(spec, resume_at), TaskKind.POLLER, f"check:{spec.name}")
        self.pollers[spec.name] = task
        task.add_done_callback(lambda done: self._poller_ended(spec, done))

    def _poller_ended(self, spec: CheckSpec[object], task: asyncio.Task[None]) -> None:
        """A poller only ends by cancellation; anything else is a bug (logged with its traceback by the task's guard),
        so restart it and count it."""
        if task.cancelled() or self._closed or self.pollers.get(spec.name) is not task:
            return
        exc = task.exception()
        self.deaths.setdefault(spec.name, []).append(self.clock())
        self.deaths[spec.name] = [t for t in self.deaths[spec.name] if self.clock() - t < DEATH_WINDOW]
        self.metrics.poller_restarts.labels(spec.name).inc()
        event(log, logging.WARNING, f"the poller of check {spec.name} died ({type(exc).__name__}); "
              f"restarting it in {format_duration(RESTART_DELAY)}", check=spec.name)

        def restart() -> None:
            self._restarts.discard(handle)
            if not self._closed and self.specs.get(spec.name) is spec and self.pollers.get(spec.name) is task:
                self._spawn(spec)

        handle = asyncio.get_running_loop().call_later(RESTART_DELAY, restart)
        self._restarts.add(handle)

    async def _poll(self, spec: CheckSpec[object], next_at: float | None = None) -> None:
        check, me = self.checks[spec.name], asyncio.current_task()
        if next_at is None:
            # The first run comes soon (a small random offset), so the first answers are right quickly; the
            # second comes at a random phase of the interval, so that many checks with one interval spread out
            # over it instead of firing together and stalling the probes behind a burst of runs.
            await asyncio.sleep(spec.initial_delay + random.uniform(0, min(spec.interval * 0.1, 0.25)))
            next_at = self.clock() - spec.interval * random.uniform(0.0, 0.5)
        else:  # taking over from a poller whose run was left behind: keep its schedule
            await asyncio.sleep(max(0.0, next_at - self.clock()))
        while True:
            result = await self.run_once(spec, check, me)
            if self.pollers.get(spec.name) is not me:
                return  # this run outlived its timeout and was left behind; another poller took over
            self._record(spec, result)
            next_at = _next_run(next_at, self.clock(), spec.interval)
            await asyncio.sleep(next_at - self.clock())

    async def run_once(self, spec: CheckSpec[object], check: Check, task: asyncio.Task[Any] | None = None) -> Result:
        """Run a check once, bounded by its timeout; never raises (but for cancellation).

        The run goes on in the calling task, with one timer for its deadline: at the deadline the task is
        cancelled, and a run that has not ended CANCEL_GRACE later is left behind (kept in `stuck`, owned
        and awaited at close) while a new poller takes over the check's schedule.
        """
        start, wall = self.clock(), time.time()
        if spec.name in self.stuck:
            return self._result(Outcome.TIMEOUT, "the previous run is still stuck after its timeout", start, wall)
        task = task or asyncio.current_task()  # the caller's own task (the poller passes itself)
        assert task is not None
        deadline = _Deadline(self, spec, task, start)
        error: BaseException | None = None
        try:
            message = await check.run()
        except asyncio.CancelledError as exc:
            if task.cancelling() > deadline.fired:  # cancelled from outside too: close, reload
                deadline.cancel()
                raise
            error = exc
        except Exception as exc:  # noqa: BLE001 - every failure becomes a result
            error = exc
        deadline.cancel()
        if deadline.fired:
            task.uncancel()  # the cancellation was the deadline's own, and it is handled here
            return self._result(Outcome.TIMEOUT, f"timed out after {format_duration(spec.timeout)}", start, wall)
        if error is None:
            return self._result(Outcome.SUCCESS, message, start, wall)
        if isinstance(error, CheckTimeout):
            return self._result(Outcome.TIMEOUT, str(error), start, wall)
        if isinstance(error, CheckFailure):
            return self._result(Outcome.FAILURE, str(error), start, wall)
        if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
            return self._result(Outcome.TIMEOUT, f"timed out: {error}" if str(error) else "timed out", start, wall)
        log.debug("check %s raised", spec.name, exc_info=error)
        return self._result(Outcome.ERROR, f"{type(error).__name__}: {error}", start, wall)

    def _abandon(self, spec: CheckSpec[object], task: asyncio.Task[Any], start: float) -> None:
        """A run ignored its cancellation past the grace period: leave it behind, report the timeout and let a
        new poller go on with the schedule (it reports the stuck run until that ends)."""
        if self._closed or self.pollers.get(spec.name) is not task:
            return
        self._leave_behind(spec.name, task)
        self._record(spec, self._result(Outcome.TIMEOUT, f"timed out after {format_duration(spec.timeout)}",
                                        start, time.time()))
        self._spawn(spec, resume_at=_next_run(start, self.clock(), spec.interval))

    def _leave_behind(self, name: str, task: asyncio.Task[Any]) -> None:
        """Keep a run that ignores cancellation owned, so close() can still await it."""
        self.stuck[name] = task

        def finished(done: asyncio.Task[Any]) -> None:
            _consume(done)
            if self.stuck.get(name) is done:
                del self.stuck[name]

        task.add_done_callback(finished)

    def _result(self, outcome: Outcome, message: str, start: float, wall: float) -> Result:
        # Scrubbed as shown (on one line) and before the cut, which could leave a secret unrecognisable; the cut
        # keeps the start (what failed) and the end (a command's last words).
        message = one_line(self.scrub(one_line(str(message))), MAX_MESSAGE, tail=MAX_MESSAGE - MAX_MESSAGE // 4 - 5)
        now = self.clock()
        return Result(outcome, message, max(0.0, now - start), now, wall)

    def _record(self, spec: CheckSpec[object], result: Result) -> None:
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


class _Deadline:
    """One run's timeout: a timer that cancels the run's task, then one that leaves it behind if it lingers."""

    __slots__ = ("engine", "fired", "handle", "spec", "start", "task")

    def __init__(self, engine: Engine, spec: CheckSpec[object], task: asyncio.Task[Any], start: float) -> None:
        self.engine, self.spec, self.task, self.start, self.fired = engine, spec, task, start, 0
        self.handle = asyncio.get_running_loop().call_later(spec.timeout, self._fire)

    def _fire(self) -> None:
        self.fired = 1
        self.task.cancel()
        self.handle = asyncio.get_running_loop().call_later(CANCEL_GRACE, self._linger)

    def _linger(self) -> None:
        self.engine._abandon(self.spec, self.task, self.start)

    def cancel(self) -> None:
        self.handle.cancel()


def _next_run(previous: float, now: float, interval: float) -> float:
    """The run after `previous`; when a slow run made it late, skip the missed ticks rather than bunch up."""
    next_at = previous + interval
    if next_at < now:
        next_at = now + interval - (now - next_at) % interval
    return next_at


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve a finished task's outcome so asyncio does not warn that it was never retrieved."""
    if not task.cancelled():
        task.exception()
