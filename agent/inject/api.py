"""The public types of injection: options in, an outcome (or an InjectError naming the key path) out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent import DEFAULT_KUBERNETES, IMAGE
from agent.kube.drain import Drain
from agent.kube.versions import Source

__all__ = ["Drain", "InjectError", "Options", "Outcome"]


class InjectError(Exception):
    """Bad input: the message names the key path; `path` is the keys from the pod template to the bad node."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


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
