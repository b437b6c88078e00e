"""Fault injection from the outside: a check-type plug-in that breaks one owned task of the agent it runs in.

Installed only by the tests (a distribution on PYTHONPATH, see test_task_faults.py): the agent itself carries no
test hook. At its first run the `fault` check finds the agent in its own process and makes the named task raise:

- `poller`: its own run returns a message that cannot be printed, so its poller dies (at every run);
- `shutdown`: the app target's `alive` raises, in the sequence's step 2;
- `shutdown_late`: the app target's `remaining` raises, after the stop signal went out (once the wait for the
  app ends);
- `app_watcher`: the app monitor's `ever_seen` raises once, as the watcher reads it;
- `watchdog`: the watchdog's measurement raises, inside the event loop's select;
- `reload`: applying a reloaded config raises;
- `server`: building /status raises, in its request handler.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any

from agent.checks import CheckContext, CheckSpec, CheckType
from agent.fields import Enum, Field

TASKS = ("poller", "shutdown", "shutdown_late", "app_watcher", "watchdog", "reload", "server")
log = logging.getLogger("agent.fault")


class InjectedFault(Exception):
    """What the broken task raises."""


@dataclass(frozen=True)
class Params:
    task: str


def _agent() -> Any:
    from agent.runtime.daemon import Agent

    return next(o for o in gc.get_objects() if isinstance(o, Agent))


def _raise(where: str) -> Any:
    def broken(*args: object, **kwargs: object) -> Any:
        raise InjectedFault(f"injected into the {where}")
    return broken


async def _araise_alive() -> bool:
    raise InjectedFault("injected into the shutdown sequence")


def _break_watcher(agent: Any) -> None:
    monitor = agent.app
    base = type(monitor)

    class Broken(base):  # type: ignore[valid-type,misc]
        @property
        def ever_seen(self) -> bool:
            self.__class__ = base  # once: the sequence reads it too, and must not fail for this test's reason
            raise InjectedFault("injected into the app watcher")

    monitor.__class__ = Broken


def arm(task: str) -> None:
    agent = _agent()
    if task == "shutdown":
        agent.shutdown.target.alive = _araise_alive
    elif task == "shutdown_late":
        agent.shutdown.target.remaining = _raise("shutdown sequence, after the stop signal")
    elif task == "app_watcher":
        _break_watcher(agent)
    elif task == "watchdog":
        agent.watchdog.observe = _raise("watchdog")
    elif task == "reload":
        agent.engine.apply = _raise("reload")
    elif task == "server":
        agent.server.status = _raise("server")


class Unprintable:
    def __str__(self) -> str:
        raise InjectedFault("injected into the poller")


class Fault:
    def __init__(self, params: Params) -> None:
        self.task = params.task
        self.armed = False

    async def run(self) -> str:
        if self.task == "poller":
            return Unprintable()  # type: ignore[return-value]
        if not self.armed:
            self.armed = True
            arm(self.task)
            log.warning("fault armed: %s", self.task)
        return f"armed: {self.task}"

    async def close(self) -> None:
        return None


def create(spec: CheckSpec[Params], ctx: CheckContext) -> Fault:
    return Fault(spec.params)


TYPE = CheckType(name="fault", fields=(Field("task", Enum(TASKS), doc="the owned task to break"),), params=Params,
                 create=create)
