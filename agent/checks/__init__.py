"""Check types: the registry of the built-in types and the plug-ins, and the interface they implement.

The interface lives in agent.checkapi and is re-exported here for plug-in authors. The registry reads the
`sidecar_agent.checks` entry points on first use, not at import.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from typing import TYPE_CHECKING

from agent.checkapi import (
    AppView,
    Check,
    CheckContext,
    CheckFailure,
    CheckSpec,
    CheckTimeout,
    CheckType,
    ChildReaper,
    ProcessSample,
)

if TYPE_CHECKING:
    import importlib.metadata

__all__ = ["AppView", "Check", "CheckContext", "CheckFailure", "CheckSpec", "CheckTimeout", "CheckType", "ChildReaper",
           "PluginError", "ProcessSample", "is_known", "load_type", "missing_requirement", "not_installed", "type_names"]

ENTRY_POINT_GROUP = "sidecar_agent.checks"
DISTRIBUTION = "sidecar-agent"
# The built-in types, as pyproject.toml registers them in the entry-point group. They are always there,
# whether the package was installed (and its own entry points repeat them) or runs from a source tree.
BUILTIN = {
    name: f"agent.checks.{name}_check:TYPE"
    for name in ("process", "http", "tcp", "exec", "file", "heartbeat", "redis", "postgres", "grpc", "dns")
}


class PluginError(Exception):
    """A check-type plug-in that cannot be used as installed (a name taken twice, a module that does not load)."""


def _origin(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    where = f"distribution '{dist.name} {dist.version}'" if dist is not None else "an unknown distribution"
    return f"{where}, entry point '{entry_point.name} = {entry_point.value}' in group {ENTRY_POINT_GROUP}"


def _is_ours(entry_point: importlib.metadata.EntryPoint) -> bool:
    dist = entry_point.dist
    own = dist is not None and re.sub(r"[-_.]+", "-", dist.name).lower() == DISTRIBUTION
    return own or entry_point.value == BUILTIN.get(entry_point.name)


@functools.cache
def _registry() -> dict[str, str]:
    """Check type name -> "module:attribute": the built-ins, then the plug-ins' entry points.

    Raises PluginError when a plug-in takes a built-in type's name, or two distributions register one name.
    (Not cached then: functools.cache keeps only results, so every use reports it again.)
    """
    import importlib.metadata  # here, not above: reading it costs about 1 MiB that an agent of built-in types never needs

    found = dict(BUILTIN)
    plugins: dict[str, importlib.metadata.EntryPoint] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        name = entry_point.name
        if _is_ours(entry_point):
            continue  # the package's own registration of a built-in
        if name in BUILTIN:
            raise PluginError(f"the check type '{name}' of {_origin(entry_point)} takes the name of a built-in check type; "
                              "the plug-in must register its type under another name (or be uninstalled)")
        other = plugins.get(name)
        if other is not None and other.value != entry_point.value:
            raise PluginError(f"two plug-ins register the check type '{name}': {_origin(other)}; and {_origin(entry_point)}")
        plugins[name] = entry_point
        found[name] = entry_point.value
    return found


def type_names() -> list[str]:
    """Every check type the agent knows, built in or installed as a plug-in."""
    return sorted(_registry())


def is_known(name: str) -> bool:
    """Whether a check type of this name exists; a built-in one is known without reading the plug-ins."""
    return name in BUILTIN or name in _registry()


def load_type(name: str) -> CheckType[object]:
    """Import a check type's module; heavy client libraries load later, in `create`.

    The engine treats params as opaque: each type's own `create` gets the params its `params` built.
    """
    target = BUILTIN.get(name) or _registry()[name]
    module_name, _, attr = target.partition(":")
    try:
        check_type = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot load the check type '{name}' from {target}: {type(exc).__name__}: {exc}") from None
    if not isinstance(check_type, CheckType):
        raise PluginError(f"the check type '{name}' at {target} is a {type(check_type).__name__}, not an agent.checks.CheckType")
    if check_type.name != name:
        raise PluginError(f"the check type registered as '{name}' ({target}) calls itself '{check_type.name}'")
    return check_type


def not_installed(body: object) -> bool:
    """Whether a check as written in a config (a mapping with its `type`) needs a client library that is not installed
    here. inject and lint leave such a check unloaded rather than refuse it: the agent's image has the library."""
    if not isinstance(body, dict) or body.get("type") not in type_names():
        return False
    return missing_requirement(load_type(str(body["type"]))) is not None


def missing_requirement(check_type: CheckType[object]) -> str | None:
    """The install hint when a module the type needs is absent (found without importing it), else None."""
    for module in check_type.requires:
        if importlib.util.find_spec(module) is None:
            extra = check_type.extra or check_type.name
            return (f"a {check_type.name} check needs the Python package that provides '{module}': "
                    f"pip install 'sidecar-agent[{extra}]'")
    return None
