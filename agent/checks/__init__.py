"""Check types: the registry, and what every check type provides."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.config import CheckSpec
    from agent.fields import Field


class CheckFailure(Exception):
    """A check ran and the thing it checks is unhealthy; the message says why."""


class Check(Protocol):
    """One configured check: `run` returns a success message or raises CheckFailure."""

    async def run(self) -> str: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class CheckType:
    """What a check type module exports as `TYPE`: its keys, and how to build a check."""

    name: str
    fields: Sequence[Field]
    params: Callable[..., Any]
    create: Callable[[CheckSpec, Any], Check]
    is_dependency: Callable[[Any], bool] = lambda params: False
    validate: Callable[[Any], str | None] = lambda params: None


BUILTIN = {
    name: f"agent.checks.{name}_check:TYPE"
    for name in ("process", "http", "tcp", "exec", "file", "heartbeat")
}


def type_names() -> list[str]:
    """Every check type the agent knows."""
    return sorted(BUILTIN)


def load_type(name: str) -> CheckType:
    """Import a check type's module; heavy client libraries load later, in `create`."""
    module_name, _, attr = BUILTIN[name].partition(":")
    check_type = getattr(importlib.import_module(module_name), attr)
    assert isinstance(check_type, CheckType)
    return check_type


@dataclass
class CheckContext:
    """What checks may use besides their own params: the app monitor, pushed heartbeats, the clock, the reaper."""

    app: Any  # agent.app.AppMonitor | None
    heartbeats: dict[str, float]  # check name -> monotonic time of the last push
    clock: Callable[[], float]
    reaper: Any  # agent.reaper.Reaper: every child process is started through it
