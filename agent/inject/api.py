"""The public types of injection: options in, an outcome (or an InjectError naming the key path) out."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from agent import DEFAULT_KUBERNETES, IMAGE
from agent.kube.versions import Source


class InjectError(Exception):
    """Bad input: the message names the key path; `path` is the keys from the pod template to the bad node."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


class Drain(enum.Enum):
    """How the injected agent ends the drain: `--drain` and the annotation sidecar-agent.io/drain."""

    TIMER = "timer"  # drain_delay; the app's preStop sleeps it (>= 1.30)
    ENDPOINTS = "endpoints"  # when the pod has left its EndpointSlices; the app's preStop waits on /prestop/wait


@dataclass(frozen=True)
class Options:
    image: str = IMAGE
    # The oldest kubelet of the cluster (agent.kube.versions), which decides the sidecar mode, and where it came
    # from: both are recorded in the status annotation.
    kubernetes_version: tuple[int, int] = DEFAULT_KUBERNETES
    kubernetes_source: Source = Source.DEFAULT
    drain: Drain = Drain.TIMER  # a pod template's sidecar-agent.io/drain annotation overrides it


@dataclass(frozen=True)
class Outcome:
    template: dict[str, Any]  # the pod template after injection; equal to the input when skipped or unchanged
    injected: bool  # False when skipped (opted out, already injected, hostNetwork, ...)
    notes: list[str] = field(default_factory=list)  # warnings: why skipped, probes left as they were, ...
