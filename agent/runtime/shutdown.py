"""The graceful-shutdown sequence: fail readiness, drain, relay the stop signal, kill at the timeout.

One sequence per agent, started by the first trigger (SIGTERM, SIGINT, /prestop, /quitquitquit,
the app's own exit); later triggers join it. The numbered steps match docs/shutdown.md.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from agent.config import ShutdownConfig, StopScope
from agent.enums import Described
from agent.kube.drain import EndedBy, Ending, timer
from agent.logs import event
from agent.process.tree import Member, describe, signal_each
from agent.runtime.health import Health
from agent.runtime.phases import ALLOWED, Phase
from agent.runtime.tasks import TaskKind, Tasks
from agent.runtime.threads import run_internal
from agent.units import format_duration

log = logging.getLogger("agent.shutdown")
KILL_REAP_BOUND = 5.0
POLL = 0.1
PERMISSION_HINT = ("run the agent as the app's user (securityContext.runAsUser), or as root with only the KILL "
                   "capability (capabilities: {drop: [ALL], add: [KILL]}; a non-root container gets no capabilities "
                   "from its spec), with shareProcessNamespace: true")


class ShutdownOutcome(Described):
    """How a shutdown sequence ended: /status's `outcome` and the label of sidecar_shutdown_outcome_total."""

    EXITED = ("exited", "the app exited after the stop signal")
    KILLED = ("killed", "the app was still running at `stop_timeout` and got SIGKILL")
    GONE = ("gone", "the app had exited before the agent could signal it (its exit may have been the trigger)")
    DENIED = ("denied", "the kernel refused the signal (the agent runs as another user, without `CAP_KILL`): the "
              "sequence ends at once, so `/prestop` returns and the kubelet's own SIGTERM reaches the app")
    NO_APP = ("no_app", "no app to signal after the drain: no `app.match`, or the app is not running or not visible "
              "(no shared process namespace)")
    NOT_RELAYED = ("not_relayed", "`relay_signal: false`: the kubelet signals the app once `/prestop` has drained")
    ERROR = ("error", "an internal error in the sequence (logged with its traceback, counted in "
             "`sidecar_task_failures_total{task=\"shutdown\"}`): with `relay_signal` the app still gets `stop_signal` "
             "(unless it already had it), then SIGKILL at `stop_timeout`; the agent exits 1")


class AppTarget(Protocol):
    """The app as the sequence sees it: found by app.match (run mode) or the agent's child (exec mode)."""

    @property
    def description(self) -> str: ...

    @property
    def ever_seen(self) -> bool: ...

    async def alive(self) -> bool: ...

    def send(self, signum: int, scope: StopScope) -> str: ...

    def kill(self, scope: StopScope) -> list[Member]: ...

    def leftovers(self) -> list[Member]: ...

    def remaining(self) -> str | None: ...

    async def wait_exit(self, timeout: float) -> bool: ...


class DrainSource(Protocol):
    """What decides the drain's end beside the timer (agent.kube.endpoints_client.EndpointsWatch)."""

    @property
    def live(self) -> bool: ...

    def ending(self, started: float, drain_delay: float) -> Ending: ...

    def changed(self) -> asyncio.Event: ...


@dataclass
class Report:
    """What the sequence did, for /status and the logs."""

    trigger: str | None = None
    started: float | None = None  # epoch seconds
    outcome: ShutdownOutcome | None = None
    error: str | None = None
    signalled_after: float | None = None  # seconds from the trigger to the stop signal
    drained_after: float | None = None  # seconds from the trigger to the drain's end (before any connection wait)
    drain_ended_by: str | None = None  # endpoints, timer or min
    pod_deleted: bool | None = None  # what the API showed when /prestop asked (None: not asked, or no answer)


ESTABLISHED = "01"  # the state column of /proc/net/tcp


def established_connections(port: int, tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> int:
    """Established TCP connections whose local port is `port`, in this network namespace (the pod's).

    Read straight from the kernel's tables and filtered by state and port as they stream by: listing every
    socket through psutil took half a second with tens of thousands of TIME_WAIT sockets around.
    """
    suffix = f":{port:04X}"
    count = 0
    for table in tables:
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)  # the header
                for line in lines:
                    fields = line.split(None, 4)
                    if len(fields) > 3 and fields[3] == ESTABLISHED and fields[1].endswith(suffix):
                        count += 1
        except FileNotFoundError:
            continue  # no IPv6 in this namespace
    return count


class Shutdown:
    """Runs the sequence once; exposes events for /prestop callers and the daemon."""

    def __init__(self, health: Health, config: ShutdownConfig, target: AppTarget | None, *,
                 on_outcome: Callable[[ShutdownOutcome], None] = lambda outcome: None,
                 on_drain: Callable[[EndedBy, float], None] = lambda ended_by, seconds: None,
                 connections: Callable[[int], int] = established_connections,
                 endpoints: DrainSource | None = None,
                 clock: Callable[[], float] = time.monotonic, tasks: Tasks) -> None:
        self.health, self.config, self.target = health, config, target
        self.on_outcome, self.on_drain, self.connections, self.clock = on_outcome, on_drain, connections, clock
        self.endpoints = endpoints
        self.tasks = tasks
        self.report = Report()
        self.drained = asyncio.Event()  # readiness has failed for the whole drain
        self.stopped = asyncio.Event()  # the sequence is over; the agent may exit
        self.hurry = asyncio.Event()  # a second SIGINT: skip the remaining waits
        self.begun = asyncio.Event()  # a trigger has started the sequence
        self.task: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._sending: list[Callable[[], None]] | None = None  # while the stop signal goes out: what waits for its log
        self._counting: asyncio.Future[int] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None

    def trigger(self, reason: str, *, app_gone: bool = False) -> None:
        """Start the sequence, or do nothing when it already runs (every trigger is idempotent)."""
        if self.task is not None:
            return
        self.report = Report(trigger=reason, started=time.time())
        self._started_at = self.clock()
        self.task = self.tasks.start(self._sequence(reason, app_gone), TaskKind.SHUTDOWN)
        self.begun.set()

    async def begins_within(self, seconds: float) -> bool:
        """Whether the sequence has begun, or begins within `seconds` (a hook that came just before the trigger)."""
        try:
            await asyncio.wait_for(self.begun.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def wait_for_prestop(self, *, bounded: bool = False) -> str | None:
        """Hold a preStop hook until the app is stopped (or, when the signal is not relayed, the drain is over);
        the sequence's outcome. `bounded`: give up after the grace period and return None (a hook that only waits
        for a stop that something else starts)."""
        done = self.stopped if self.config.relay_signal else self.drained
        if not bounded:
            await done.wait()
        else:
            try:
                await asyncio.wait_for(done.wait(), self.config.grace_period)
            except TimeoutError:
                return None
        return self.report.outcome or "drained"

    def skip_waits(self) -> None:
        if not self.hurry.is_set():
            event(log, logging.WARNING, "skipping the remaining shutdown waits")
            self.hurry.set()

    async def close(self) -> None:
        """Cancel the sequence if it still runs and await it (the daemon's last step)."""
        if self.task is not None:
            await self.tasks.cancel(self.task)

    async def _sequence(self, reason: str, app_gone: bool) -> None:
        try:
            await self._steps(reason, app_gone)
        except Exception as exc:  # noqa: BLE001 - reported like any task's failure, and the app is still stopped
            self.tasks.failed(TaskKind.SHUTDOWN, "shutdown", exc)
            await self._stop_after_error(exc)
        finally:
            self._enter(Phase.STOPPED, "the shutdown sequence is over")
            self.drained.set()
            self.stopped.set()  # 5. release /prestop callers; the daemon flushes and exits

    async def _steps(self, reason: str, app_gone: bool) -> None:
        target, cfg = self.target, self.config
        # 1. Fail readiness at once, before anything that waits; liveness keeps its normal answer.
        self._enter(Phase.DRAINING, f"{reason}: readiness fails from now on")
        # 2. The app already gone (its exit was the trigger, or a native sidecar stopped after it): exit at once.
        if app_gone or (target is not None and target.ever_seen and not await target.alive()):
            if target is not None and cfg.relay_signal and await self._stop_leftovers(target):
                return  # exec mode: the app's command exited, part of its tree ran on and was stopped
            event(log, logging.INFO, f"shutdown ({reason}): the app has already exited, stopping at once",
                  trigger=reason)
            self._finish(ShutdownOutcome.GONE)
            return
        ends = f"for {format_duration(cfg.drain_delay)}"
        if self.endpoints is not None and cfg.endpoints is not None:
            if not self.endpoints.live:
                ends += f" ({self._ending().why})"
            else:
                ends = (f"until the pod has left its EndpointSlices plus {format_duration(cfg.endpoints.margin)} (at "
                        f"least {format_duration(cfg.endpoints.min)}, at most {format_duration(cfg.drain_delay)})")
        event(log, logging.INFO, f"shutdown started by {reason}: draining {ends}"
              + (f" and until port {cfg.drain_connections.port} has no connections (at most "
                 f"{format_duration(cfg.drain_connections.timeout)})" if cfg.drain_connections else ""),
              trigger=reason)
        # 3. Wait for the endpoints to forget the pod, and optionally for the app's connections to end.
        await self._drain()
        self.drained.set()
        if not cfg.relay_signal:
            self._finish(ShutdownOutcome.NOT_RELAYED)
            return
        if target is None or not await target.alive():
            if target is not None and await self._stop_leftovers(target):
                return  # the app exited during the drain, leaving processes behind, which were stopped
            what = "no app is configured" if target is None else f"the app ({target.description}) is not running"
            event(log, logging.WARNING, f"drain over; {what}, so no signal to relay")
            self._finish(ShutdownOutcome.NO_APP)
            return
        # 4. Relay the stop signal; SIGKILL when stop_timeout passes.
        self._enter(Phase.STOPPING, f"sending {cfg.stop_signal} to the app")
        await self._stop_app(target)

    def _ending(self) -> Ending:
        started, delay = self._started_at, self.config.drain_delay
        return timer(started, delay) if self.endpoints is None else self.endpoints.ending(started, delay)

    async def _wait_drain_end(self) -> None:
        """3a. Wait for the drain's end as decided now, deciding again at each change the EndpointSlices show."""
        while not self.hurry.is_set():
            ending, now = self._ending(), self.clock()
            if now >= ending.at:
                seconds = round(now - self._started_at, 6)
                self.report.drained_after, self.report.drain_ended_by = seconds, ending.ended_by.value
                self.on_drain(ending.ended_by, seconds)
                if self.endpoints is not None:  # without them the drain is the timer, as the start line said
                    event(log, logging.INFO, f"drain over after {format_duration(round(seconds, 3))}: {ending.why}",
                          drain_ended_by=ending.ended_by.value, drained_after_seconds=seconds)
                return
            await self._pause(ending.at - now, None if self.endpoints is None else self.endpoints.changed())

    async def _drain(self) -> None:
        """Wait for the drain's end (drain_delay, or what the EndpointSlices show) and then, until its timeout, for
        the app's connections to end; never past either deadline."""
        await self._wait_drain_end()
        conns = self.config.drain_connections
        conns_end = self._started_at + (conns.timeout if conns else 0.0)
        left: int | None = None  # the last count that finished: a count cut off by the deadline says nothing new
        while conns is not None and not self.hurry.is_set():
            now = self.clock()
            if now >= conns_end:
                break
            counted = await self._count(conns.port, conns_end - now)
            left = left if counted is None else counted
            if left == 0 or self.clock() >= conns_end:
                break
            await self._pause(max(0.0, min(POLL, conns_end - self.clock())))
        if conns is not None and left != 0 and self.clock() >= conns_end and not self.hurry.is_set():
            if left is None:
                event(log, logging.WARNING, f"the connections on port {conns.port} could not be counted within "
                      f"{format_duration(conns.timeout)}; going on")
            else:
                event(log, logging.WARNING, f"{left} connections on port {conns.port} still open after "
                      f"{format_duration(conns.timeout)}; going on", connections=left)

    async def _count(self, port: int, budget: float) -> int | None:
        """The app's established connections, or None when counting would run past the deadline (a count still
        running is waited for again, never started twice: the agent's own threads are few)."""
        if self._counting is None or self._counting.done():
            # An owned task: a count that fails, even one abandoned at the deadline, is logged and counted.
            self._counting = self.tasks.start(run_internal(self.connections, port), TaskKind.SHUTDOWN,
                                              "shutdown:count-connections")
        try:
            return await asyncio.wait_for(asyncio.shield(self._counting), budget)
        except TimeoutError:
            return None
        except Exception:  # noqa: BLE001 - logged by the task's guard; the drain goes on by its timer
            return None

    async def _stop_app(self, target: AppTarget) -> None:
        cfg = self.config
        signum = signal.Signals[cfg.stop_signal]
        self.report.signalled_after = round(self.clock() - self._started_at, 6)
        self._sending = []
        try:
            whom = await run_internal(target.send, signum, cfg.stop_scope)  # reads /proc: off the loop
        except ProcessLookupError:
            self._signal_logged()
            event(log, logging.INFO, "the app exited before the stop signal")
            if not await self._stop_leftovers(target):
                self._finish(ShutdownOutcome.GONE)
            return
        except PermissionError:
            # Nothing the agent does can stop the app now: end the sequence, so that /prestop returns
            # and the kubelet's own SIGTERM reaches the app with the grace period left.
            self._signal_logged()
            self._denied(cfg.stop_signal, target)
            return
        except BaseException:
            self._signal_logged()
            raise
        else:
            event(log, logging.INFO, f"sent {cfg.stop_signal} to {whom}; waiting up to "
                  f"{format_duration(cfg.stop_timeout)} for every process of it to exit", signal=cfg.stop_signal)
            self._signal_logged()
        sent_at = self.clock()
        if await self._until(target.wait_exit(cfg.stop_timeout), cfg.stop_timeout):
            event(log, logging.INFO, f"the app exited {format_duration(round(self.clock() - sent_at, 3))} "
                  f"after {cfg.stop_signal}", stopped_by=cfg.stop_signal)
            self._finish(ShutdownOutcome.EXITED)
            return
        left = await run_internal(target.remaining)
        if self.hurry.is_set():
            message = "the wait for the app was skipped"
        else:
            message = f"the app did not exit within stop_timeout {format_duration(cfg.stop_timeout)}"
        await self._kill(target, message + (f": {left}" if left else ""))

    def after_signal_logged(self, callback: Callable[[], None]) -> None:
        """Run `callback` now, or, while the stop signal is going out, once its log line is written: the app may
        exit (and say so) in the moment between the signal and that line, and the log must keep their order."""
        if self._sending is None:
            callback()
        else:
            self._sending.append(callback)

    def _signal_logged(self) -> None:
        waiting, self._sending = self._sending or [], None
        for callback in waiting:
            callback()

    async def _stop_leftovers(self, target: AppTarget) -> bool:
        """The app exited by itself and left processes behind (exec mode): stop them too, then SIGKILL.
        False when it left nothing (and nothing was done)."""
        cfg = self.config
        left = await run_internal(target.leftovers)
        if not left:
            return False
        signum = signal.Signals[cfg.stop_signal]
        reached = await run_internal(signal_each, left, signum)
        event(log, logging.WARNING, f"the app has exited but {describe(left)} still "
              f"{'run' if len(left) > 1 else 'runs'}: sent {cfg.stop_signal} to {describe(reached) or 'none'}",
              signal=cfg.stop_signal, pids=[m.pid for m in left])
        if await self._until(target.wait_exit(cfg.stop_timeout), cfg.stop_timeout):
            event(log, logging.INFO, "the app's remaining processes have exited", stopped_by=cfg.stop_signal)
            self._finish(ShutdownOutcome.GONE)
            return True
        left_now = await run_internal(target.remaining)
        await self._kill(target, f"the app's remaining processes did not exit within stop_timeout "
                                 f"{format_duration(cfg.stop_timeout)}" + (f": {left_now}" if left_now else ""))
        return True

    async def _kill(self, target: AppTarget, why: str) -> None:
        """SIGKILL what is left, name it in the log, and wait (bounded) for it to go."""
        try:
            killed = await run_internal(target.kill, self.config.stop_scope)
        except PermissionError:
            self._denied("SIGKILL", target)
            return
        if not killed:
            event(log, logging.INFO, f"{why}; it exited before SIGKILL", stopped_by=self.config.stop_signal)
            self._finish(ShutdownOutcome.EXITED)
            return
        event(log, logging.WARNING, f"{why}; sending SIGKILL to {describe(killed)}", stopped_by="SIGKILL",
              killed=[m.pid for m in killed])
        if not await target.wait_exit(KILL_REAP_BOUND):
            still = await run_internal(target.remaining)
            event(log, logging.ERROR, f"after SIGKILL {still or 'part of the app'}")
        self._finish(ShutdownOutcome.KILLED)

    def _denied(self, signame: str, target: AppTarget) -> None:
        message = f"cannot send {signame} to the app ({target.description}): permission denied; {PERMISSION_HINT}"
        event(log, logging.ERROR, message, signal=signame)
        self.report.error = message
        self._finish(ShutdownOutcome.DENIED)

    async def _until(self, waiting: Awaitable[bool], timeout: float) -> bool:
        """Await `waiting` unless told to hurry first; False when hurried."""
        work = self.tasks.start(_awaited(waiting), TaskKind.SHUTDOWN, "shutdown:wait-exit")
        hurry = self.tasks.start(self.hurry.wait(), TaskKind.SHUTDOWN, "shutdown:hurry")
        try:
            await asyncio.wait({work, hurry}, timeout=timeout + 1.0, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, hurry):
                await self.tasks.cancel(task)
        return work.done() and not work.cancelled() and work.exception() is None and bool(work.result())

    async def _pause(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep `seconds`, or less when told to hurry or when `wake` is set."""
        waits = [asyncio.ensure_future(flag.wait()) for flag in (self.hurry, wake) if flag is not None]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _enter(self, phase: Phase, reason: str) -> None:
        lifecycle = self.health.lifecycle
        if phase in ALLOWED[lifecycle.phase]:
            lifecycle.transition(phase, reason)

    def _finish(self, outcome: ShutdownOutcome) -> None:
        """Record how the sequence ended; the first outcome stands (a denied signal stays denied), but for an
        internal error, which replaces any: the agent then exits 1."""
        if self.report.outcome is None or (outcome is ShutdownOutcome.ERROR and self.report.outcome is not outcome):
            self.report.outcome = outcome
            self.on_outcome(outcome)

    async def _stop_after_error(self, exc: Exception) -> None:
        """The sequence failed: still end the app the plainest way (stop_signal, SIGKILL at stop_timeout), touching
        nothing but the target's own signal and wait calls, each of which may fail in turn."""
        target, cfg = self.target, self.config
        self.report.error = f"internal error in the shutdown sequence ({type(exc).__name__}); see the agent's log"
        self.drained.set()
        self._signal_logged()  # anything that waited for the stop signal's log line may go now
        if target is not None and cfg.relay_signal:
            try:
                if self.report.signalled_after is None:  # not sent yet (once is enough: a second may mean more)
                    self._enter(Phase.STOPPING, f"the sequence failed: sending {cfg.stop_signal} to the app anyway")
                    self.report.signalled_after = round(self.clock() - self._started_at, 6)
                    whom = await run_internal(target.send, signal.Signals[cfg.stop_signal], cfg.stop_scope)
                    event(log, logging.WARNING, f"after the internal error, sent {cfg.stop_signal} to {whom}; waiting "
                          f"up to {format_duration(cfg.stop_timeout)}", signal=cfg.stop_signal)
                if not await self._until(target.wait_exit(cfg.stop_timeout), cfg.stop_timeout):
                    killed = await run_internal(target.kill, cfg.stop_scope)
                    if killed:
                        event(log, logging.WARNING, f"after the internal error, sent SIGKILL to {describe(killed)}",
                              stopped_by="SIGKILL", killed=[m.pid for m in killed])
            except ProcessLookupError:
                pass  # the app is gone: nothing left to stop
            except Exception as again:  # noqa: BLE001 - the daemon's last step still SIGKILLs a child of its own
                event(log, logging.ERROR, f"could not stop the app after the internal error: "
                      f"{type(again).__name__}: {again}", error=type(again).__name__)
        self._finish(ShutdownOutcome.ERROR)


async def _awaited(waiting: Awaitable[bool]) -> bool:
    """An awaitable as a coroutine, for Tasks.start."""
    return await waiting
