"""The owner of the agent's background tasks: it starts and names each one, and cancels and awaits them all at close.

A task that raises is never lost in a gather: its failure is logged with the task's name (and the traceback) and
counted in `sidecar_task_failures_total{task}`, by kind. A task that can recover from its own failure (the shutdown
sequence, which still stops the app) catches it and reports it through `Tasks.failed`, so that it is logged and
counted the same way. After `close` no new task starts (aiojobs' `Scheduler.close`; kopf's `aiotasks.guard`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from agent.enums import Described
from agent.logs import event

log = logging.getLogger("agent.tasks")
T = TypeVar("T")
CLOSE_GRACE = 2.0  # how long close waits for the cancelled tasks before it abandons them (named in the log)


class TaskKind(Described):
    """What an owned task does: the `task` label of sidecar_task_failures_total (one series per kind)."""

    SHUTDOWN = ("shutdown", "the shutdown sequence; on failure the app is still stopped, the outcome is error and "
                "the agent exits 1")
    POLLER = ("poller", "a check's poller; restarted after 1s")
    APP_WATCHER = ("app_watcher", "the app watcher; /agent/livez fails from then on and the agent exits 1")
    WATCHDOG = ("watchdog", "the event loop's lag measurement; /agent/livez fails from then on and the agent exits 1")
    RELOAD = ("reload", "a config reload; it is answered as failed and the agent goes on")
    SERVER = ("server", "a request handler of the listener; the request is answered 500 and the agent goes on")
    ENDPOINTS = ("endpoints_watch", "the EndpointSlice watch (shutdown.endpoints); the drain is the timer from then "
                 "on, and /status says why")


class Tasks:
    """Starts, names, cancels and awaits every background task of one agent; counts the ones that fail."""

    def __init__(self, on_failure: Callable[[TaskKind], None] = lambda kind: None) -> None:
        self.on_failure = on_failure
        self.running: set[asyncio.Task[Any]] = set()
        self.failed_kinds: set[TaskKind] = set()
        self.closed = False

    def start(self, coro: Coroutine[Any, Any, T], kind: TaskKind, name: str | None = None) -> asyncio.Task[T]:
        """Run `coro` as a task named `name` (default: the kind's name), guarded and owned until it ends."""
        if self.closed:
            coro.close()  # never started: no "coroutine was never awaited" warning
            raise RuntimeError(f"no new task after close: {name or kind.value}")
        name = name or kind.value
        task = asyncio.create_task(self._guard(coro, kind, name), name=name)
        self.running.add(task)
        task.add_done_callback(self._ended)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, T], kind: TaskKind, name: str) -> T:
        try:
            return await coro
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a plug-in may raise a BaseException of its own: a failure all the same
            self.failed(kind, name, exc)
            raise  # the task ends with it, so that whoever awaits it sees it too

    def failed(self, kind: TaskKind, name: str, exc: BaseException) -> None:
        """Log a task's failure with its name and traceback, and count it under its kind."""
        self.failed_kinds.add(kind)
        log.error("task %s failed: %s: %s", name, type(exc).__name__, exc, exc_info=exc,
                  extra={"fields": {"task": name, "kind": kind.value, "error": type(exc).__name__}})
        self.on_failure(kind)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self.running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the guard has logged it, asyncio need not warn at collection

    async def cancel(self, task: asyncio.Task[Any], grace: float = CLOSE_GRACE) -> None:
        """Cancel one task and await it, at most `grace` seconds."""
        task.cancel()
        await self._await({task}, grace)

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        """Cancel every task still running and await them (bounded); no task starts afterwards.

        A task already cancelled was its owner's to await (the engine's stuck check runs, abandoned after their
        grace): it is not waited for twice."""
        self.closed = True
        tasks = {task for task in self.running if not task.cancelling()}
        for task in tasks:
            task.cancel()
        await self._await(tasks, grace)

    async def _await(self, tasks: set[asyncio.Task[Any]], grace: float) -> None:
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            event(log, logging.WARNING, f"task {task.get_name()} did not stop after cancellation; abandoning it",
                  task=task.get_name())
