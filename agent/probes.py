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


# How long `GET /prestop/wait` waits for a stop to begin before it takes the hook for a container restart (the kubelet
# kills one container for a failed liveness or startup probe and runs its preStop hook, with no pod stop). On a pod
# deletion the kubelet starts the agent's SIGTERM (a regular sidecar) or its exec preStop `sidecar-agent stop` (a native
# one) in parallel with the app's hook; the exec hook, a Python start-up, arrives last: bench/RESULTS.md ("Hook
# arrival") measured it up to 1.66 s behind the hook (median 0.68 s) on a 2-core machine at load average 10, before the
# container runtime's own exec time. Three times the worst, and no longer than the `sleep` hook inject writes from 1.30
# (the drain, 5 s), which holds a restarted app as long. Here, beside the probes, so that lint reads it without the
# server's imports.
HOOK_WINDOW = 5.0
