"""Which Kubernetes version decides how the agent is injected: the oldest kubelet of the cluster, as pure logic.

The kubelet, not the API server, runs the pod, and a kubelet may be up to three minors older than its API server:
- below 1.29 the kubelet knows no native sidecars: it runs the agent (an init container with `restartPolicy:
  Always`) as a classic init container, which never exits, so the pod stays at `Init:0/1` forever;
- a 1.29 kubelet has native sidecars (beta, on by default) but runs a preStop `sleep` action as a no-op
  (`handlers.go`: the `PodLifecycleSleepAction` gate is off there), so the app would get SIGTERM at t=0, undrained;
- from 1.30 both work.
So the version that counts is the oldest `status.nodeInfo.kubeletVersion` among the nodes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from agent import DEFAULT_KUBERNETES

Version = tuple[int, int]

NATIVE_SIDECARS: Version = (1, 29)  # an init container with restartPolicy Always runs beside the app
SLEEP_ACTION: Version = (1, 30)  # a preStop `sleep` action really sleeps
# What the webhook writes while it does not know the oldest kubelet (before the first read of the nodes, or when a
# read fails): a regular container and an httpGet hook, which every kubelet runs as written. A newer cluster then
# gets the older mode, which still drains; the newer mode on an older kubelet would not.
FALLBACK: Version = (1, 28)

# v1.29.4, v1.30.0-eks-036c24b, v1.28.3+k3s1, 1.31.2-gke.1000: the major and minor are all that count.
_KUBELET = re.compile(r"v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+].*)?")


class Mode(enum.Enum):
    """How the agent is added, by the oldest kubelet's version (docs/inject.md: Shutdown, per sidecar mode)."""

    REGULAR = "regular container"  # a regular container; the app's preStop is an httpGet of /prestop/wait
    NATIVE_WAIT = "native sidecar, httpGet hook"  # a native sidecar; the app's preStop is still the httpGet
    NATIVE_SLEEP = "native sidecar, sleep hook"  # a native sidecar; the app's preStop is a sleep action

    @property
    def native(self) -> bool:
        return self is not Mode.REGULAR

    @property
    def sidecar(self) -> str:
        """The `sidecar` of an injected pod's status annotation: native or regular."""
        return "native" if self.native else "regular"


def mode(version: Version) -> Mode:
    """The injection mode that works on a kubelet of this version."""
    if version >= SLEEP_ACTION:
        return Mode.NATIVE_SLEEP
    if version >= NATIVE_SIDECARS:
        return Mode.NATIVE_WAIT
    return Mode.REGULAR


class Source(enum.Enum):
    """Where the version used for an injection came from (the status annotation records it)."""

    FLAG = "flag"  # --kubernetes-version X.Y
    DEFAULT = "default"  # no --kubernetes-version: DEFAULT_KUBERNETES
    NODES = "nodes"  # --kubernetes-version auto: the oldest kubelet, read from the nodes
    FALLBACK = "fallback"  # --kubernetes-version auto, but the nodes are not read (yet): FALLBACK


@dataclass(frozen=True)
class Chosen:
    """A Kubernetes version and where it came from."""

    version: Version = DEFAULT_KUBERNETES
    source: Source = Source.DEFAULT

    @property
    def text(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


def parse_kubelet(text: str) -> Version:
    """(major, minor) of a node's `kubeletVersion`; ValueError when it is not a version."""
    found = _KUBELET.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"not a kubelet version: {text!r}")
    return int(found[1]), int(found[2])


def oldest(kubelets: Iterable[tuple[str, str]]) -> Version:
    """The oldest version among (node name, kubeletVersion) pairs.

    ValueError when there is no node, or a node's version cannot be read: that node may be the oldest, so no
    answer is safe (the caller falls back)."""
    versions: list[Version] = []
    for node, text in kubelets:
        try:
            versions.append(parse_kubelet(text))
        except ValueError:
            raise ValueError(f"node {node}: kubeletVersion {text!r} is not a version like v1.30.2") from None
    if not versions:
        raise ValueError("the cluster has no nodes")
    return min(versions)
