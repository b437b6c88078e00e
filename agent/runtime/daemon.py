"""The daemon: wires config, cache, engine, server and shutdown together and owns their lifetimes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import signal
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent.checks import CheckContext
from agent.config import Config, ShutdownConfig, StopScope
from agent.logs import Scrubber, event
from agent.process.monitor import AppMonitor, AppSample
from agent.process.reaper import Reaper, become_subreaper
from agent.process.supervisor import FORWARDED, AppSupervisor
from agent.process.tree import Member, describe, leftover_message
from agent.runtime.engine import Engine
from agent.runtime.health import Health
from agent.runtime.metrics import Metrics
from agent.runtime.phases import Phase
from agent.runtime.server import ProbeServer
from agent.runtime.shutdown import Shutdown, ShutdownOutcome
from agent.runtime.status import iso, status_document
from agent.runtime.tasks import TaskKind, Tasks
from agent.runtime.threads import install_default_executor, run_internal
from agent.runtime.watchdog import Watchdog

if TYPE_CHECKING:
    from agent.kube.endpoints_client import EndpointsWatch

log = logging.getLogger("agent")


def raise_fd_limit() -> None:
    """Use the hard limit on open files: many idle or slow clients must not starve the probes of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


APP_WATCH_INTERVAL = 1.0
APP_WATCH_EXIT_INTERVAL = 0.25  # with exit_with_app, notice the app's exit quickly
# Tasks that are not restarted: once one has failed, /agent/livez fails (the kubelet restarts the agent) and the agent
# exits 1. A poller is restarted, a reload or a request is answered as failed; the sequence ends with outcome error.
VITAL = (TaskKind.APP_WATCHER, TaskKind.WATCHDOG)


class Agent:
    """One running agent: `start` serves and polls, `stop` ends everything it started, in order."""

    def __init__(self, config: Config, scrub: Scrubber, *, command: Sequence[str] | None = None,
                 reload: Callable[[], Config] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.scrub, self.clock, self.reload_source = config, scrub, clock, reload
        self.started_wall = time.time()
        self.reaper = Reaper()
        self.child = AppSupervisor(command, self.reaper) if command else None
        self.health = Health(config.checks, clock, on_phase=self._log_phase, slack=lambda: self.watchdog.lag)
        watch_app = self.child is not None or config.app.match is not None
        self.app = AppMonitor(config.app.match, clock=clock, on_restart=self._log_restart) if watch_app else None
        self.heartbeats: dict[str, float] = {}
        self.metrics = Metrics(self.health, lambda: self.app, clock,
                               endpoints_live=lambda: self.endpoints is not None and self.endpoints.live)
        self.tasks = Tasks(self.metrics.count_task_failure)
        self.exec_slots = asyncio.Semaphore(config.agent.max_concurrent_exec)
        context = CheckContext(self.app, self.heartbeats, clock, self.reaper, self.exec_slots)
        self.engine = Engine(self.health, self.metrics, context, scrub, self.tasks, clock)
        self.watchdog = Watchdog(self.metrics.loop_lag, clock,
                                 on_failure=lambda exc: self.tasks.failed(TaskKind.WATCHDOG, "watchdog", exc))
        self.engine.on_result(self._maybe_running)
        self.endpoints: EndpointsWatch | None = None
        if config.shutdown.follows_endpoints:
            assert config.shutdown.endpoints is not None
            from agent.kube import endpoints_client  # only with the feature: nothing more is imported otherwise

            self.endpoints = endpoints_client.build(config.shutdown.endpoints, os.environ, clock=clock)
        self.shutdown = Shutdown(self.health, self._shutdown_config(config), self.child or self.app,
                                 on_outcome=self.metrics.count_shutdown, on_drain=self.metrics.observe_drain,
                                 endpoints=self.endpoints, clock=clock, tasks=self.tasks)
        self.server = ProbeServer(self.health, self.metrics, status=self.status, agent_live=self.agent_problems,
                                  heartbeats=self.heartbeats, controls=self, token=config.admin.token, clock=clock,
                                  tasks=self.tasks)
        # A native sidecar's own preStop asks the agent to serve on after the sequence until its SIGTERM, which the
        # kubelet sends once the app containers have exited (the sidecar's turn): it must not exit while they run.
        self.until_sigterm = False
        self.signalled = asyncio.Event()  # SIGTERM or SIGINT received: the agent may exit once the sequence is over
        self.holding_since: float | None = None  # epoch seconds, while the sequence is over and SIGTERM is awaited
        # preStop hooks taken for a container restart (a failed liveness or startup probe), not a pod stop.
        self.restarts = 0
        self.last_restart: dict[str, object] | None = None
        self.deleted: bool | None = None  # the API's last answer on the pod's deletion (True is final)
        self._watcher: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[tuple[bool, str]]] = set()
        self._reload_lock = asyncio.Lock()
        # Counted here as well as in the metrics: /status reads these rather than make the registry collect.
        self.reloads_applied = self.reloads_refused = 0

    def _shutdown_config(self, config: Config) -> ShutdownConfig:
        """In exec mode the stop signal is always relayed: the child is the agent's own, and leaving it
        running would only get it SIGKILLed when the agent exits."""
        if self.child is not None and not config.shutdown.relay_signal:
            return dataclasses.replace(config.shutdown, relay_signal=True)
        return config.shutdown

    # -- what the server and the signal handlers call ------------------------------------------------

    async def status(self) -> dict[str, object]:
        """The /status document; the app's process tree is read now, off the loop (only /status shows it)."""
        tree = await run_internal(self._app_tree)
        report = self.shutdown.report
        shutdown = None if report.trigger is None else {
            "trigger": report.trigger, "started": iso(report.started), "outcome": report.outcome,
            "error": report.error, "signalled_after_seconds": report.signalled_after,
            "drained_after_seconds": report.drained_after, "drain_ended_by": report.drain_ended_by,
            "pod_deleted": report.pod_deleted,
            "exit": "on SIGTERM" if self.until_sigterm else "when stopped",
            "waiting_for_sigterm_since": iso(self.holding_since)}
        extra: dict[str, object] = {"mode": "exec" if self.child else "run", "shutdown": shutdown,
                                    "prestop_hooks_held": self.server.hooks_held,
                                    "container_restarts": {"count": self.restarts, "last": self.last_restart},
                                    "agent": self.own_state(),
                                    "endpoints": None if self.endpoints is None else self.endpoints.document()}
        if self.child is not None:
            extra["app_exit_code"] = self.child.exit_code
        return status_document(self.health, self.app, self.clock(), started_wall=self.started_wall, tree=tree,
                               extra=extra)

    def _app_tree(self) -> list[Member]:
        if self.child is not None:
            return self.child.tree()
        return self.app.watched_tree() if self.app is not None else []

    def own_state(self) -> dict[str, object]:
        """The agent's own vital signs, for /status."""
        return {"event_loop_lag_seconds": round(self.watchdog.lag, 6), "tasks": len(asyncio.all_tasks()),
                "open_fds": open_fds(), "poller_restarts": sum(len(v) for v in self.engine.deaths.values()),
                "config_reloads": self.reloads_applied, "config_reload_failures": self.reloads_refused,
                "reaped_orphans": self.reaper.reaped_orphans}

    def agent_problems(self) -> list[str]:
        """Why the agent itself is unhealthy: a lagging event loop, a dead or crash-looping poller."""
        problems = [f"the poller of check {name} has stopped or keeps dying" for name in self.engine.dead_pollers()]
        problems += [f"the {kind.value} task failed (see the log); restart the agent" for kind in VITAL
                     if kind in self.tasks.failed_kinds]
        if self.watchdog.lag > self.config.agent.max_loop_lag:
            problems.append(f"the event loop lags {self.watchdog.lag:.2f}s, over max_loop_lag "
                            f"{self.config.agent.max_loop_lag:g}s")
        return problems

    def trigger(self, reason: str, *, until_sigterm: bool = False) -> None:
        """Start the sequence (or join it); `until_sigterm`: after it, serve on until SIGTERM (unless already had)."""
        if until_sigterm and not self.until_sigterm and not self.signalled.is_set():
            self.until_sigterm = True
            event(log, logging.INFO, f"{reason}: after the shutdown sequence the agent serves on until its SIGTERM, "
                  "which the kubelet sends once the app containers have exited", exit="on SIGTERM")
        self.shutdown.trigger(reason)

    async def pod_deleted(self) -> bool | None:
        """Whether the API shows the pod's deletionTimestamp (None without API access); kept in the report.

        True tells a pod deletion from a container restart (a liveness or startup kill runs the hook too); False
        alone does not prove a restart (a node shutdown or an eviction sets no deletionTimestamp first)."""
        if self.endpoints is None:
            return None
        if self.deleted is not True:  # a deletion mark never goes away: once seen, not asked again
            deleted = await self.endpoints.pod_deleted()
            if deleted is not None and deleted != self.deleted:
                event(log, logging.INFO, "the API shows the pod's deletion" if deleted else
                      "the API shows no deletion of the pod (a container restart, a node shutdown or an eviction)",
                      pod_deleted=deleted)
            self.deleted = deleted if deleted is not None else self.deleted
        if self.shutdown.running and self.shutdown.report.pod_deleted is None:  # the stop's own report
            self.shutdown.report.pod_deleted = self.deleted
        return self.deleted

    def container_restart(self, hook: str, reason: str) -> None:
        """A preStop hook that came for one container's restart (a failed probe): logged and counted, nothing else."""
        self.restarts += 1
        self.last_restart = {"hook": hook, "reason": reason, "time": iso(time.time())}
        event(log, logging.WARNING, f"{hook}: a container restart, not a pod stop ({reason}): answered at once, "
              "nothing started", hook=hook, container_restarts=self.restarts)

    def set_drained(self, drained: bool) -> None:
        if drained != self.health.admin_drained:
            self.health.set_admin_drained(drained)
            event(log, logging.INFO, "readiness drained by hand" if drained else "readiness restored by hand",
                  admin_drained=drained)

    def request_reload(self, source: str) -> asyncio.Task[tuple[bool, str]]:
        """Start a reload in an owned task (SIGHUP's handler must not wait)."""
        task = self.tasks.start(self._locked_reload(source), TaskKind.RELOAD)
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)
        return task

    async def reload(self, source: str) -> tuple[bool, str]:
        """Re-read the config: apply it whole, or refuse it whole and keep the old one. (ok, what happened).

        It runs in an owned task, shielded: a caller that goes away (an HTTP client) does not cut it in half.
        """
        try:
            return await asyncio.shield(self.request_reload(source))
        except Exception as exc:  # noqa: BLE001 - logged and counted by the task's guard; answered as a failure
            return False, f"the reload failed with an internal error ({type(exc).__name__}); see the agent's log"

    async def _locked_reload(self, source: str) -> tuple[bool, str]:
        async with self._reload_lock:
            return await self._reload(source)

    async def _reload(self, source: str) -> tuple[bool, str]:
        if self.reload_source is None:
            return False, "this agent runs on the embedded default config: there is no file to reload"
        try:
            new = await run_internal(self.reload_source)
        except Exception as exc:  # noqa: BLE001 - UsageError carries every problem; anything else is refused too
            self.metrics.reload_failures.inc()
            self.reloads_refused += 1
            message = f"config reload ({source}) refused, the old config keeps running: {exc}"
            event(log, logging.ERROR, message, reload="refused")
            return False, str(exc)
        old = self.config
        self.scrub.add(*new.secrets)
        notes = [f"{key} changed: restart the agent to apply it" for key, same in (
            ("listen", new.listen == old.listen), ("app", new.app == old.app),
            ("agent", new.agent == old.agent)) if not same]
        if new.shutdown.endpoints != old.shutdown.endpoints:
            notes.append("shutdown.endpoints changed: restart the agent to apply it")
            new = dataclasses.replace(new, shutdown=dataclasses.replace(new.shutdown, endpoints=old.shutdown.endpoints))
        if new.shutdown != old.shutdown:
            if self.shutdown.running:
                notes.append("shutdown changed, but the shutdown already runs: kept the old settings")
            else:
                self.shutdown.config = self._shutdown_config(new)
        self.server.token = new.admin.token
        self.server.heartbeat_checks = {s.name for s in new.checks if s.type == "heartbeat"}
        logging.getLogger("agent").setLevel(new.log.level.upper())
        self.config = dataclasses.replace(new, listen=old.listen, app=old.app, agent=old.agent)
        added, removed, changed = await self.engine.apply(new.checks)
        for name in removed:
            self.heartbeats.pop(name, None)
        self.metrics.reloads.inc()
        self.reloads_applied += 1
        summary = (f"config reloaded ({source}): {len(added)} checks added, {len(removed)} removed, "
                   f"{len(changed)} changed, {len(new.checks) - len(added) - len(changed)} kept")
        event(log, logging.INFO, summary + "".join(f"; {n}" for n in notes), reload="applied",
              added=added, removed=removed, changed=changed)
        return True, summary

    def on_signal(self, signum: int) -> None:
        """Signal handlers only record the request; the shutdown task does the work."""
        name = signal.Signals(signum).name
        first = not self.signalled.is_set()
        self.signalled.set()
        if not self.shutdown.running:
            event(log, logging.INFO, f"received {name}", signal=name)
            self.shutdown.trigger(name)
        elif self.until_sigterm and first:
            # The kubelet signals a native sidecar once the app containers have exited: nothing is left to drain for.
            held = "" if self.holding_since is None else f" after waiting {time.time() - self.holding_since:.1f}s"
            event(log, logging.INFO, f"received {name}{held}: the app containers have exited; exiting now",
                  signal=name)
            if not self.shutdown.stopped.is_set():
                self.shutdown.skip_waits()
        elif signum == signal.SIGINT:
            self.shutdown.skip_waits()
        else:
            event(log, logging.INFO, f"received {name} again; the shutdown already runs", signal=name)

    async def hold(self) -> None:
        """After the sequence: when asked (a native sidecar's own preStop), serve on until SIGTERM."""
        if not self.until_sigterm or self.signalled.is_set():
            return
        self.holding_since = time.time()
        event(log, logging.INFO, "the shutdown sequence is over; still serving (readiness 503, /status, /metrics) until "
              "SIGTERM, which the kubelet sends once the app containers have exited", waiting_for="SIGTERM")
        await self.signalled.wait()

    # -- lifetime ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """1. reap children, 2. serve (probes answer from the first moment), 3. start the app (exec mode),
        4. start the pollers, 5. watch the app."""
        self.reaper.install()
        self.watchdog.start()
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
        if self.endpoints is not None:
            self.endpoints.start(self.tasks)
        if self.app is not None:
            self._watcher = self.tasks.start(self._watch_app(), TaskKind.APP_WATCHER, "app-watcher")

    async def stop(self) -> None:
        """1. finish the shutdown task and any reload, 2. stop the pollers, 3. stop watching the app,
        4. close the listener, 5. stop the watchdog, 6. make sure the child (exec mode) is gone and reaped,
        7. cancel and await any task still running."""
        await self.shutdown.close()
        if self.endpoints is not None:
            await self.endpoints.close()
        for task in list(self._reloads):
            await self.tasks.cancel(task)
        if self.health.lifecycle.phase is not Phase.STOPPED:
            self.health.lifecycle.transition(Phase.STOPPED, "agent stopping")
        await self.engine.close()
        if self._watcher is not None:
            await self.tasks.cancel(self._watcher)
        await self.server.close()
        self.watchdog.close()
        if self.child is not None and self.child.pid:
            # Whatever the sequence left (it was cancelled, or the SIGKILL came late): the agent never exits
            # while part of the app it started still runs.
            killed = await run_internal(self.child.kill, StopScope.GROUP)
            if killed:
                event(log, logging.WARNING, f"sent SIGKILL to {describe(killed)} before exiting",
                      killed=[m.pid for m in killed])
            await self.child.wait_exit(5.0)
        await self.tasks.close()
        self.reaper.uninstall()

    @property
    def exit_code(self) -> int:
        """1 when the shutdown sequence failed, or (run mode) a vital task did; else 0 in run mode, and the app's own
        code (128+N for signal N) in exec mode."""
        if self.shutdown.report.outcome is ShutdownOutcome.ERROR:
            return 1
        if self.child is None:
            return 1 if self.tasks.failed_kinds & set(VITAL) else 0
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
            if self.child is None and not alive and not self.app.ever_seen and not warned:
                warned = True
                event(log, logging.WARNING, f"the app ({self.app.description}) is not visible: without "
                      "shareProcessNamespace: true the agent cannot watch or signal it; shutdown will still drain")
            if alive and warned:
                warned = False
                event(log, logging.INFO, f"found the app: pid {self.app.sample.pid if self.app.sample else '?'}")
            if self.child is None and not alive and self.app.ever_seen and self.config.app.exit_with_app:
                self.shutdown.trigger("the app exited", app_gone=True)
                return
            await asyncio.sleep(interval)

    def _app_exited(self) -> None:
        assert self.child is not None
        code = self.child.exit_code
        left = self.child.tree()

        def say() -> None:
            if left:  # a wrapper ended, the app it ran did not: never say the app exited while it runs
                event(log, logging.INFO, f"{leftover_message(self.child.root if self.child else None, left)} "
                      f"(exit code {code})", exit_code=code)
            else:
                event(log, logging.INFO, f"the app exited with code {code}", exit_code=code)

        self.shutdown.after_signal_logged(say)
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


async def serve(config: Config, scrub: Scrubber, command: Sequence[str] | None = None,
                reload: Callable[[], Config] | None = None) -> int:
    """Run the agent until its shutdown sequence ends; every task is cancelled and awaited before returning."""
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    install_default_executor(loop)
    agent = Agent(config, scrub, command=command, reload=reload)
    handled = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    for signum in handled[:2]:
        loop.add_signal_handler(signum, agent.on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload, "SIGHUP")
    forwarded = list(FORWARDED) if agent.child is not None else []
    for signum in forwarded:
        assert agent.child is not None
        loop.add_signal_handler(signum, agent.child.forward, signum)
    try:
        await agent.start()
        event(log, logging.INFO, f"agent started with {len(config.checks)} checks", checks=len(config.checks))
        if scrub.too_short:
            event(log, logging.WARNING, f"{scrub.too_short} secret(s) are shorter than 4 characters and cannot be "
                  "redacted from logs and messages without mangling them: use longer secrets")
        await agent.shutdown.stopped.wait()
        await agent.hold()
    finally:
        await agent.stop()  # the handlers stay in place meanwhile: a late SIGINT or SIGTERM changes nothing
        # Straight from the loop's handler to SIG_IGN: the loop's own remove_signal_handler would first restore
        # the default action, and a SIGINT or SIGTERM landing in that gap kills the process with the wrong code.
        # The loop keeps its records; the caller exits without closing it (cli._run_loop).
        for signum in handled + forwarded:
            signal.signal(signum, signal.SIG_IGN)
    code = agent.exit_code
    event(log, logging.INFO, "agent stopped" + (f"; exiting with the app's code {code}" if agent.child else ""),
          exit_code=code)
    return code
