"""The graceful-shutdown sequence: fail readiness, drain, relay the stop signal, kill at the timeout.

One sequence per agent, started by the first trigger (SIGTERM, SIGINT, /prestop, /quitquitquit,
the app's own exit); later triggers join it. The numbered steps match docs/shutdown.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import psutil

from agent.config import ShutdownConfig
from agent.health import Health
from agent.logs import event
from agent.phases import ALLOWED, Phase
from agent.threads import run_internal
from agent.units import format_duration

log = logging.getLogger("agent.shutdown")
KILL_REAP_BOUND = 5.0
POLL = 0.1
PERMISSION_HINT = ("run the agent as the app's user (securityContext.runAsUser), or as root with only the KILL "
                   "capability (capabilities: {drop: [ALL], add: [KILL]}; a non-root container gets no capabilities "
                   "from its spec), with shareProcessNamespace: true")


class AppTarget(Protocol):
    """The app as the sequence sees it: found by app.match (run mode) or the agent's child (exec mode)."""

    @property
    def description(self) -> str: ...

    @property
    def ever_seen(self) -> bool: ...

    async def alive(self) -> bool: ...

    def send(self, signum: int) -> int: ...

    async def wait_exit(self, timeout: float) -> bool: ...


@dataclass
class Report:
    """What the sequence did, for /status and the logs."""

    trigger: str | None = None
    started: float | None = None  # epoch seconds
    outcome: str | None = None  # exited, killed, gone, denied, no_app, not_relayed
    error: str | None = None
    signalled_after: float | None = None  # seconds from the trigger to the stop signal


def established_connections(port: int) -> int:
    """Established TCP connections whose local port is `port`, in this network namespace (the pod's)."""
    return sum(1 for c in psutil.net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


class Shutdown:
    """Runs the sequence once; exposes events for /prestop callers and the daemon."""

    def __init__(self, health: Health, config: ShutdownConfig, target: AppTarget | None, *,
                 on_outcome: Callable[[str], None] = lambda outcome: None,
                 connections: Callable[[int], int] = established_connections,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.health, self.config, self.target = health, config, target
        self.on_outcome, self.connections, self.clock = on_outcome, connections, clock
        self.report = Report()
        self.drained = asyncio.Event()  # readiness has failed for the whole drain
        self.stopped = asyncio.Event()  # the sequence is over; the agent may exit
        self.hurry = asyncio.Event()  # a second SIGINT: skip the remaining waits
        self.task: asyncio.Task[None] | None = None
        self._started_at = 0.0

    @property
    def running(self) -> bool:
        return self.task is not None

    def trigger(self, reason: str, *, app_gone: bool = False) -> None:
        """Start the sequence, or do nothing when it already runs (every trigger is idempotent)."""
        if self.task is not None:
            return
        self.report = Report(trigger=reason, started=time.time())
        self._started_at = self.clock()
        self.task = asyncio.create_task(self._sequence(reason, app_gone), name="shutdown")

    async def wait_for_prestop(self) -> str:
        """Hold a preStop hook until the app is stopped (or, when the signal is not relayed, the drain is over);
        the sequence's outcome."""
        await (self.stopped.wait() if self.config.relay_signal else self.drained.wait())
        return self.report.outcome or "drained"

    def skip_waits(self) -> None:
        if not self.hurry.is_set():
            event(log, logging.WARNING, "skipping the remaining shutdown waits")
            self.hurry.set()

    async def close(self) -> None:
        """Cancel the sequence if it still runs and await it (the daemon's last step)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    async def _sequence(self, reason: str, app_gone: bool) -> None:
        try:
            await self._steps(reason, app_gone)
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
            event(log, logging.INFO, f"shutdown ({reason}): the app has already exited, stopping at once",
                  trigger=reason)
            self._finish("gone")
            return
        event(log, logging.INFO, f"shutdown started by {reason}: draining for {format_duration(cfg.drain_delay)}"
              + (f" and until port {cfg.drain_connections.port} has no connections (at most "
                 f"{format_duration(cfg.drain_connections.timeout)})" if cfg.drain_connections else ""),
              trigger=reason)
        # 3. Wait for the endpoints to forget the pod, and optionally for the app's connections to end.
        await self._drain()
        self.drained.set()
        if not cfg.relay_signal:
            self._finish("not_relayed")
            return
        if target is None or not await target.alive():
            what = "no app is configured" if target is None else f"the app ({target.description}) is not running"
            event(log, logging.WARNING, f"drain over; {what}, so no signal to relay")
            self._finish("no_app")
            return
        # 4. Relay the stop signal; SIGKILL when stop_timeout passes.
        self._enter(Phase.STOPPING, f"sending {cfg.stop_signal} to the app")
        await self._stop_app(target)

    async def _drain(self) -> None:
        cfg = self.config
        conns = cfg.drain_connections
        delay_end = self._started_at + cfg.drain_delay
        conns_end = self._started_at + (conns.timeout if conns else 0.0)
        while not self.hurry.is_set():
            now = self.clock()
            if now >= delay_end:
                if conns is None or now >= conns_end:
                    break
                remaining = await run_internal(self.connections, conns.port)
                if remaining == 0:
                    break
            await self._pause(min(POLL, max(0.0, delay_end - now)) if now < delay_end else POLL)
        if conns is not None and self.clock() >= conns_end and not self.hurry.is_set():
            left = await run_internal(self.connections, conns.port)
            if left:
                event(log, logging.WARNING, f"{left} connections on port {conns.port} still open after "
                      f"{format_duration(conns.timeout)}; going on", connections=left)

    async def _stop_app(self, target: AppTarget) -> None:
        cfg = self.config
        signum = signal.Signals[cfg.stop_signal]
        self.report.signalled_after = round(self.clock() - self._started_at, 6)
        try:
            pid = target.send(signum)
        except ProcessLookupError:
            event(log, logging.INFO, "the app exited before the stop signal")
            self._finish("gone")
            return
        except PermissionError:
            # Nothing the agent does can stop the app now: end the sequence, so that /prestop returns
            # and the kubelet's own SIGTERM reaches the app with the grace period left.
            self._denied(cfg.stop_signal, target)
            return
        else:
            event(log, logging.INFO, f"sent {cfg.stop_signal} to the app (pid {pid}); waiting up to "
                  f"{format_duration(cfg.stop_timeout)} for it to exit", pid=pid, signal=cfg.stop_signal)
        sent_at = self.clock()
        if await self._until(target.wait_exit(cfg.stop_timeout), cfg.stop_timeout):
            event(log, logging.INFO, f"the app exited {format_duration(round(self.clock() - sent_at, 3))} "
                  f"after {cfg.stop_signal}", stopped_by=cfg.stop_signal)
            self._finish("exited")
            return
        if self.hurry.is_set():
            message = "the wait for the app was skipped; sending SIGKILL"
        else:
            message = f"the app did not exit within stop_timeout {format_duration(cfg.stop_timeout)}; sending SIGKILL"
        event(log, logging.WARNING, message, stopped_by="SIGKILL")
        try:
            target.send(signal.SIGKILL)
        except ProcessLookupError:
            self._finish("exited")
            return
        except PermissionError:
            self._denied("SIGKILL", target)
            return
        await target.wait_exit(KILL_REAP_BOUND)
        self._finish("killed")

    def _denied(self, signame: str, target: AppTarget) -> None:
        message = f"cannot send {signame} to the app ({target.description}): permission denied; {PERMISSION_HINT}"
        event(log, logging.ERROR, message, signal=signame)
        self.report.error = message
        self._finish("denied")

    async def _until(self, waiting: Awaitable[bool], timeout: float) -> bool:
        """Await `waiting` unless told to hurry first; False when hurried."""
        work = asyncio.ensure_future(waiting)
        hurry = asyncio.ensure_future(self.hurry.wait())
        try:
            await asyncio.wait({work, hurry}, timeout=timeout + 1.0, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, hurry):
                task.cancel()
            await asyncio.gather(work, hurry, return_exceptions=True)
        return work.done() and not work.cancelled() and work.exception() is None and bool(work.result())

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.hurry.wait(), seconds)

    def _enter(self, phase: Phase, reason: str) -> None:
        lifecycle = self.health.lifecycle
        if phase in ALLOWED[lifecycle.phase]:
            lifecycle.transition(phase, reason)

    def _finish(self, outcome: str) -> None:
        """Record how the sequence ended; the first outcome stands (a denied signal stays denied)."""
        if self.report.outcome is None:
            self.report.outcome = outcome
            self.on_outcome(outcome)
