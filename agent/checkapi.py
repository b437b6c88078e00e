"""The check-type interface: what a check type provides (built in or a plug-in), and what the engine gives it.

A leaf module (the standard library and agent.fields only), so that the config loader, the registry, the
engine and every check type depend on it and not on each other. A check type is generic in its params:
`CheckType(params=Params, create=create, ...)` makes mypy check that `create` takes a `CheckSpec[Params]`,
and that `is_dependency` and `validate` take a `Params`. Plug-ins import these names from `agent.checks`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from agent.fields import Field, with_defaults

__all__ = ["AppView", "Check", "CheckContext", "CheckFailure", "CheckSpec", "CheckTimeout", "CheckType", "ChildReaper",
           "ProcessSample"]

P = TypeVar("P")  # a check type's params: the frozen dataclass built from its fields


class CheckFailure(Exception):
    """A check ran and the thing it checks is unhealthy; the message says why."""


class CheckTimeout(CheckFailure):
    """The check's own deadline passed (a client's timeout firing before the engine's): counted as a timeout."""


@dataclass(frozen=True)
class CheckSpec(Generic[P]):
    """One configured check: the keys every check has, and its type's own params."""

    name: str
    type: str
    probes: tuple[str, ...]
    interval: float
    timeout: float
    initial_delay: float
    failure_threshold: int
    success_threshold: int
    allow_in_liveness: bool
    params: P

    @property
    def stale_after(self) -> float:
        """A result older than this counts as failing: interval + timeout + interval."""
        return 2 * self.interval + self.timeout


class Check(Protocol):
    """One configured check: `run` returns a success message or raises CheckFailure."""

    async def run(self) -> str: ...

    async def close(self) -> None: ...


class ProcessSample(Protocol):
    """The app process as last seen (agent.process.monitor.AppSample)."""

    @property
    def pid(self) -> int: ...
    @property
    def status(self) -> str: ...  # psutil's: running, sleeping, zombie, stopped...
    @property
    def rss(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def fds(self) -> int: ...
    @property
    def cpu_rate(self) -> float | None: ...  # cores used since the previous sample


class AppView(Protocol):
    """What a check may use of the app monitor (agent.process.monitor.AppMonitor)."""

    @property
    def description(self) -> str: ...  # how the app is found, for messages: `pidfile /run/app.pid`
    @property
    def error(self) -> str | None: ...  # why the last lookup found nothing

    async def refresh(self) -> ProcessSample | None: ...


class ChildReaper(Protocol):
    """What a check may use of the reaper (agent.process.reaper.Reaper), which owns waitpid for every child.

    A check that starts a process registers its pid at once and awaits the future for its raw wait status.
    """

    def watch(self, pid: int) -> asyncio.Future[int]: ...


@dataclass
class CheckContext:
    """What checks may use besides their own params: the app, pushed heartbeats, the clock, the reaper."""

    app: AppView | None  # None when the agent watches no app (no app.match, not `exec`)
    heartbeats: Mapping[str, float]  # check name -> monotonic time of the last push
    clock: Callable[[], float]  # monotonic seconds
    reaper: ChildReaper  # every child process is started through it
    exec_slots: asyncio.Semaphore | None = None  # bounds the exec checks running at once


def _never(params: object) -> bool:
    return False


def _valid(params: object) -> str | None:
    return None


@dataclass(frozen=True)
class CheckType(Generic[P]):
    """What a check type module exports as `TYPE`: its keys, and how to build a check."""

    name: str
    fields: Sequence[Field]
    params: Callable[..., P]  # called with one keyword per field, the values parsed
    create: Callable[[CheckSpec[P], CheckContext], Check]
    is_dependency: Callable[[P], bool] = _never  # true refuses the check under liveness without allow_in_liveness
    validate: Callable[[P], str | None] = _valid  # a problem across fields, as a message
    requires: tuple[str, ...] = ()  # modules imported by `create`, checked at config time without importing
    extra: str | None = None  # the pip extra that installs them

    def __post_init__(self) -> None:
        # A key's default is the params dataclass's (written once there); a plug-in's Field that repeats it is
        # accepted when the two agree.
        object.__setattr__(self, "fields", with_defaults(self.fields, self.params, strict=False))
