"""Check types: the registry, and what every check type provides."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.config import CheckSpec
    from agent.fields import Field


class CheckFailure(Exception):
    """A check ran and the thing it checks is unhealthy; the message says why."""


class CheckTimeout(CheckFailure):
    """The check's own deadline passed (a client's timeout firing before the engine's): counted as a timeout."""


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
    requires: tuple[str, ...] = ()  # modules imported by `create`, checked at config time without importing
    extra: str | None = None  # the pip extra that installs them


ENTRY_POINT_GROUP = "sidecar_agent.checks"
# The built-in types, as pyproject.toml registers them in the entry-point group; used as they are
# when the package runs from a source tree that was never installed (no entry points to read).
BUILTIN = {
    name: f"agent.checks.{name}_check:TYPE"
    for name in ("process", "http", "tcp", "exec", "file", "heartbeat", "redis", "postgres", "grpc", "dns")
}


@functools.cache
def _registry() -> dict[str, str]:
    """Check type name -> "module:attribute", from the `sidecar_agent.checks` entry points."""
    import importlib.metadata  # here, not above: reading it costs about 1 MiB that built-in types never need

    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return found or dict(BUILTIN)


def type_names() -> list[str]:
    """Every check type the agent knows, built in or installed as a plug-in."""
    return sorted(_registry())


def is_known(name: str) -> bool:
    """Whether a check type of this name exists; a built-in one is known without reading the plug-ins."""
    return name in BUILTIN or name in _registry()


def load_type(name: str) -> CheckType:
    """Import a check type's module; heavy client libraries load later, in `create`."""
    module_name, _, attr = (BUILTIN.get(name) or _registry()[name]).partition(":")
    check_type = getattr(importlib.import_module(module_name), attr)
    if not isinstance(check_type, CheckType):
        raise TypeError(f"{_registry()[name]} is not an agent.checks.CheckType")
    return check_type


def missing_requirement(check_type: CheckType) -> str | None:
    """The install hint when a module the type needs is absent (found without importing it), else None."""
    for module in check_type.requires:
        if importlib.util.find_spec(module) is None:
            extra = check_type.extra or check_type.name
            return (f"a {check_type.name} check needs the Python package that provides '{module}': "
                    f"pip install 'sidecar-agent[{extra}]'")
    return None


@dataclass
class CheckContext:
    """What checks may use besides their own params: the app monitor, pushed heartbeats, the clock, the reaper."""

    app: Any  # agent.app.AppMonitor | None
    heartbeats: dict[str, float]  # check name -> monotonic time of the last push
    clock: Callable[[], float]
    reaper: Any  # agent.reaper.Reaper: every child process is started through it
    exec_slots: Any = None  # asyncio.Semaphore bounding the exec checks running at once
