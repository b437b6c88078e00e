"""The daemon: wires config, cache, engine, server and shutdown together and owns their lifetimes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Sequence

from agent.app import AppMonitor, AppSample
from agent.checks import CheckContext
from agent.config import Config
from agent.engine import Engine
from agent.health import Health
from agent.logs import Scrubber, event
from agent.metrics import Metrics
from agent.phases import Phase
from agent.reaper import Reaper, become_subreaper, kill_quietly
from agent.server import ProbeServer
from agent.shutdown import Shutdown
from agent.status import iso, status_document
from agent.supervisor import FORWARDED, ChildProcess

log = logging.getLogger("agent")
APP_WATCH_INTERVAL = 1.0
APP_WATCH_EXIT_INTERVAL = 0.25  # with exit_with_app, notice the app's exit quickly


class Agent:
    """One running agent: `start` serves and polls, `stop` ends everything it started, in order."""

    def __init__(self, config: Config, scrub: Scrubber, *, command: Sequence[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.scrub, self.clock = config, scrub, clock
        self.started_wall = time.time()
        self.reaper = Reaper()
        self.child = ChildProcess(command, self.reaper) if command else None
        self.health = Health(config.checks, clock, on_phase=self._log_phase)
        watch_app = self.child is not None or config.app.match is not None
        self.app = AppMonitor(config.app.match, clock=clock, on_restart=self._log_restart) if watch_app else None
        self.heartbeats: dict[str, float] = {}
        self.metrics = Metrics(self.health, lambda: self.app, clock)
        self.engine = Engine(self.health, self.metrics, CheckContext(self.app, self.heartbeats, clock, self.reaper),
                             scrub, clock)
        self.engine.on_result(self._maybe_running)
        shutdown_config = config.shutdown
        if self.child is not None and not shutdown_config.relay_signal:
            # The child is the agent's own: leaving it running would only get it SIGKILLed at exit.
            shutdown_config = dataclasses.replace(shutdown_config, relay_signal=True)
        self.shutdown = Shutdown(self.health, shutdown_config, self.child or self.app,
                                 on_outcome=self.metrics.count_shutdown, clock=clock)
        self.server = ProbeServer(self.health, self.metrics, status=self.status, agent_live=self.agent_problems,
                                  heartbeats=self.heartbeats, controls=self, token=config.admin.token, clock=clock)
        self._watcher: asyncio.Task[None] | None = None

    # -- what the server and the signal handlers call ------------------------------------------------

    def status(self) -> dict[str, object]:
        report = self.shutdown.report
        shutdown = None if report.trigger is None else {
            "trigger": report.trigger, "started": iso(report.started), "outcome": report.outcome,
            "error": report.error, "signalled_after_seconds": report.signalled_after}
        extra: dict[str, object] = {"mode": "exec" if self.child else "run", "shutdown": shutdown}
        if self.child is not None:
            extra["app_exit_code"] = self.child.exit_code
        return status_document(self.health, self.app, self.clock(), started_wall=self.started_wall, extra=extra)

    def agent_problems(self) -> list[str]:
        """Why the agent itself is unhealthy; empty while its loop answers and its pollers live."""
        return [f"poller of check {name} has stopped" for name in self.engine.dead_pollers()]

    def trigger(self, reason: str) -> None:
        self.shutdown.trigger(reason)

    def set_drained(self, drained: bool) -> None:
        if drained != self.health.admin_drained:
            self.health.set_admin_drained(drained)
            event(log, logging.INFO, "readiness drained by hand" if drained else "readiness restored by hand",
                  admin_drained=drained)

    def on_signal(self, signum: int) -> None:
        """Signal handlers only record the request; the shutdown task does the work."""
        name = signal.Signals(signum).name
        if not self.shutdown.running:
            event(log, logging.INFO, f"received {name}", signal=name)
            self.shutdown.trigger(name)
        elif signum == signal.SIGINT:
            self.shutdown.skip_waits()
        else:
            event(log, logging.INFO, f"received {name} again; the shutdown already runs", signal=name)

    # -- lifetime ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """1. reap children, 2. serve (probes answer from the first moment), 3. start the app (exec mode),
        4. start the pollers, 5. watch the app."""
        self.reaper.install()
        host, port = self.config.listen
        await self.server.start(host, port)
        if self.child is not None:
            if not become_subreaper():
                event(log, logging.WARNING, "could not become a child subreaper; orphans of the app may stay zombies")
            pid = self.child.start()
            assert self.app is not None and self.child.exited is not None
            self.app.child_pid = pid
            event(log, logging.INFO, f"started the app: {self.child.description}", pid=pid)
            self.child.exited.add_done_callback(lambda _: self._app_exited())
        self.engine.start()
        if self.app is not None and self.child is None:
            self._watcher = asyncio.create_task(self._watch_app(), name="app-watcher")

    async def stop(self) -> None:
        """1. finish the shutdown task, 2. stop the pollers, 3. stop watching, 4. close the listener,
        5. make sure the child (exec mode) is gone and reaped."""
        await self.shutdown.close()
        if self.health.lifecycle.phase is not Phase.STOPPED:
            self.health.lifecycle.transition(Phase.STOPPED, "agent stopping")
        await self.engine.close()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self.server.close()
        if self.child is not None and self.child.exit_code is None and self.child.pid:
            kill_quietly(self.child.pid, signal.SIGKILL)
            await self.child.wait_exit(5.0)
        self.reaper.uninstall()

    @property
    def exit_code(self) -> int:
        """0 in run mode; the app's own code (128+N for signal N) in exec mode."""
        if self.child is None:
            return 0
        code = self.child.exit_code
        return 1 if code is None else code

    # -- internals -----------------------------------------------------------------------------------

    async def _watch_app(self) -> None:
        assert self.app is not None
        interval = APP_WATCH_EXIT_INTERVAL if self.config.app.exit_with_app else APP_WATCH_INTERVAL
        warned = False
        while True:
            try:
                alive = await self.app.alive()
            except Exception as exc:  # noqa: BLE001 - watching must not die
                event(log, logging.WARNING, f"looking up the app failed: {type(exc).__name__}: {exc}")
                alive = False
            if not alive and not self.app.ever_seen and not warned:
                warned = True
                event(log, logging.WARNING, f"the app ({self.app.description}) is not visible: without "
                      "shareProcessNamespace: true the agent cannot watch or signal it; shutdown will still drain")
            if alive and warned:
                warned = False
                event(log, logging.INFO, f"found the app: pid {self.app.sample.pid if self.app.sample else '?'}")
            if not alive and self.app.ever_seen and self.config.app.exit_with_app:
                self.shutdown.trigger("the app exited", app_gone=True)
                return
            await asyncio.sleep(interval)

    def _app_exited(self) -> None:
        assert self.child is not None
        code = self.child.exit_code
        event(log, logging.INFO, f"the app exited with code {code}", exit_code=code)
        self.shutdown.trigger(f"the app exited with code {code}", app_gone=not self.shutdown.running)

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


async def serve(config: Config, scrub: Scrubber, command: Sequence[str] | None = None) -> int:
    """Run the agent until its shutdown sequence ends; every task is cancelled and awaited before returning."""
    agent = Agent(config, scrub, command=command)
    loop = asyncio.get_running_loop()
    handled = [signal.SIGTERM, signal.SIGINT]
    for signum in handled:
        loop.add_signal_handler(signum, agent.on_signal, signum)
    forwarded = list(FORWARDED) if agent.child is not None else []
    for signum in forwarded:
        assert agent.child is not None
        loop.add_signal_handler(signum, agent.child.forward, signum)
    try:
        await agent.start()
        event(log, logging.INFO, f"agent started with {len(config.checks)} checks", checks=len(config.checks))
        await agent.shutdown.stopped.wait()
    finally:
        for signum in handled + forwarded:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signum)
        await agent.stop()
    code = agent.exit_code
    event(log, logging.INFO, "agent stopped" + (f"; exiting with the app's code {code}" if agent.child else ""),
          exit_code=code)
    return code
