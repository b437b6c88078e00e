"""The kubelet's three probes: each one's name, the agent's path that answers it, and its initial value."""

from __future__ import annotations

import enum


class Probe(enum.StrEnum):
    """A probe kind; equal to its name (`Probe.READINESS == "readiness"`), so config and YAML strings match it.

    `path` is the agent's endpoint without its slash (`/readyz`); `initial` is how a check with no verdict
    yet counts, like the kubelet's initial result: liveness starts as success, readiness and startup as failure.
    """

    path: str
    initial: bool

    LIVENESS = ("liveness", "livez", True)
    READINESS = ("readiness", "readyz", False)
    STARTUP = ("startup", "startupz", False)

    def __new__(cls, name: str, path: str, initial: bool) -> Probe:
        member = str.__new__(cls, name)
        member._value_ = name
        member.path = path
        member.initial = initial
        return member


NAMES = tuple(p.value for p in Probe)
PATHS = tuple(p.path for p in Probe)
_BY_NAME = {p.value: p for p in Probe}


def named(name: str) -> Probe:
    """The probe called `name` (KeyError for any other); `Probe(name)` does the same, but mypy reads it as `__new__`."""
    return _BY_NAME[name]
