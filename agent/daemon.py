"""The daemon: wires config, cache, engine and server together and owns their lifetimes."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

from agent.app import AppMonitor, AppSample
from agent.checks import CheckContext
from agent.config import Config
from agent.engine import Engine
from agent.health import Health
from agent.logs import Scrubber, event
from agent.metrics import Metrics
from agent.phases import Phase
from agent.server import ProbeServer
from agent.status import status_document

log = logging.getLogger("agent")


class Agent:
    """One running agent: start() serves and polls, stop() ends it all, in order."""

    def __init__(self, config: Config, scrub: Scrubber, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.scrub, self.clock = config, scrub, clock
        self.started_wall = time.time()
        self.health = Health(config.checks, clock, on_phase=self._log_phase)
        self.app = (AppMonitor(config.app.match, clock=clock, on_restart=self._log_restart)
                    if config.app.match else None)
        self.heartbeats: dict[str, float] = {}
        self.metrics = Metrics(self.health, lambda: self.app, clock)
        self.engine = Engine(self.health, self.metrics, CheckContext(self.app, self.heartbeats, clock), scrub, clock)
        self.engine.on_result(self._maybe_running)
        self.server = ProbeServer(self.health, self.metrics, status=self.status, agent_live=self.agent_problems,
                                  heartbeats=self.heartbeats, clock=clock)
        self.stop_requested = asyncio.Event()

    def status(self) -> dict[str, object]:
        return status_document(self.health, self.app, self.clock(), started_wall=self.started_wall)

    def agent_problems(self) -> list[str]:
        """Why the agent itself is unhealthy; empty when its loop answers and its pollers live."""
        dead = self.engine.dead_pollers()
        return [f"poller of check {name} has stopped" for name in dead]

    async def start(self) -> None:
        """1. serve (so probes answer from the first moment), 2. start the pollers."""
        host, port = self.config.listen
        await self.server.start(host, port)
        self.engine.start()

    async def stop(self) -> None:
        """1. stop the pollers and await them, 2. close the listener."""
        if self.health.lifecycle.phase is not Phase.STOPPED:
            self.health.lifecycle.transition(Phase.STOPPED, "agent stopping")
        await self.engine.close()
        await self.server.close()

    def _maybe_running(self) -> None:
        if self.health.latch_startup(self.clock()) and self.health.lifecycle.phase is Phase.STARTING:
            self.health.lifecycle.transition(Phase.RUNNING, "every startup check has passed")

    def _log_phase(self, before: Phase, after: Phase, reason: str) -> None:
        event(log, logging.INFO, f"phase {before.value} -> {after.value}: {reason}",
              phase=after.value, previous=before.value)

    def _log_restart(self, sample: AppSample, previous: AppSample | None) -> None:
        old = f"pid {previous.pid}" if previous else "a process that had exited"
        event(log, logging.WARNING, f"the app was restarted: {old} replaced by pid {sample.pid}",
              pid=sample.pid, restarts=self.app.restarts if self.app else 0)


async def serve(config: Config, scrub: Scrubber) -> int:
    """Run the agent until SIGTERM or SIGINT; every task is cancelled and awaited before returning."""
    agent = Agent(config, scrub)
    loop = asyncio.get_running_loop()

    def request_stop(signum: int) -> None:
        # A signal handler only records the request; the main flow does the work.
        event(log, logging.INFO, f"received {signal.Signals(signum).name}, stopping", signal=signal.Signals(signum).name)
        agent.stop_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    try:
        await agent.start()
        event(log, logging.INFO, f"agent started with {len(config.checks)} checks", checks=len(config.checks))
        await agent.stop_requested.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await agent.stop()
    event(log, logging.INFO, "agent stopped")
    return 0
