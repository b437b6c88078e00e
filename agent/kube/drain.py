"""How a drain ends and what ended it: a leaf that inject, the CLI, the shutdown sequence and the endpoints core read."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Drain(enum.Enum):
    """How an injected agent ends the drain: `--drain` and the annotation sidecar-agent.io/drain."""

    TIMER = "timer"  # drain_delay; the app's preStop sleeps it (>= 1.30)
    ENDPOINTS = "endpoints"  # when the pod has left its EndpointSlices; the app's preStop waits on /prestop/wait


class EndedBy(enum.Enum):
    """What ended a drain: the `ended_by` label of sidecar_shutdown_drain_seconds."""

    ENDPOINTS = "endpoints"  # the API showed the pod out of every slice, and the margin passed
    TIMER = "timer"  # drain_delay: the feature off, no API access, or the pod still listed as ready at the maximum
    MIN = "min"  # the pod was out (or never in) before min passed


@dataclass(frozen=True)
class Ending:
    """When the drain ends (monotonic seconds) and what ends it."""

    at: float
    ended_by: EndedBy
    why: str


def timer(started: float, drain_delay: float, why: str = "the timer (drain_delay)") -> Ending:
    """The drain of an agent that does not follow the EndpointSlices: drain_delay after the stop began."""
    return Ending(started + drain_delay, EndedBy.TIMER, why)
