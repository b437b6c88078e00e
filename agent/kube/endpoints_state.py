"""The pure core of the endpoints drain: which EndpointSlices list this pod, since when none routes to it, and
when the drain ends.

Fed the list and watch of `discovery.k8s.io/v1` EndpointSlices as decoded JSON; no I/O, and the clock is passed
in, so every rule is tested with recorded events on a fake clock (like agent/runtime/health.py). Only the slices
that list this pod are kept, as a few fields each: memory follows the Services that select the pod, not the
namespace.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.config import EndpointsConfig
from agent.kube.drain import EndedBy, Ending, timer
from agent.kube.facts import POD_IPS, POD_NAME, POD_NAMESPACE

SERVICE_LABEL = "kubernetes.io/service-name"


class Action(enum.Enum):
    """What the client does after an event."""

    NONE = "none"
    RELIST = "relist"  # 410 Gone: the resource version is too old; list again
    REWATCH = "rewatch"  # another error event: watch again from the last resource version


@dataclass(frozen=True)
class PodIdentity:
    """This pod, as the downward API names it: a slice lists it by targetRef or by one of its addresses."""

    namespace: str
    name: str | None = None
    ips: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str], namespace: str | None = None) -> PodIdentity | None:
        """POD_NAMESPACE (or the service account's namespace), and POD_NAME or POD_IPS (comma-separated, as
        `status.podIPs` gives them); None when the pod cannot be told apart."""
        ns = env.get(POD_NAMESPACE) or namespace
        name = env.get(POD_NAME) or None
        ips = frozenset(ip.strip() for ip in (env.get(POD_IPS) or env.get("POD_IP") or "").split(",") if ip.strip())
        if not ns or (name is None and not ips):
            return None
        return cls(ns, name, ips)

    def is_me(self, endpoint: Mapping[str, Any], slice_namespace: str | None) -> bool:
        ref = endpoint.get("targetRef")
        if isinstance(ref, dict) and ref.get("kind", "Pod") == "Pod" and self.name is not None:
            return bool(ref.get("name") == self.name and (ref.get("namespace") or slice_namespace) == self.namespace)
        addresses = endpoint.get("addresses")
        return bool(self.ips) and isinstance(addresses, list) and not self.ips.isdisjoint(addresses)


@dataclass(frozen=True)
class Listing:
    """How one slice lists this pod (the conditions of its endpoint; nil ready or serving reads as true)."""

    slice: str
    service: str | None
    ready: bool
    serving: bool
    terminating: bool

    def document(self) -> dict[str, Any]:
        return {"slice": self.slice, "service": self.service, "ready": self.ready, "serving": self.serving,
                "terminating": self.terminating}


def listing_of(obj: Mapping[str, Any], pod: PodIdentity) -> Listing | None:
    """This pod's listing in one EndpointSlice object, or None when the slice does not list it."""
    meta = obj.get("metadata") or {}
    endpoints = obj.get("endpoints") or []
    for endpoint in endpoints if isinstance(endpoints, list) else []:
        if isinstance(endpoint, dict) and pod.is_me(endpoint, meta.get("namespace")):
            cond = endpoint.get("conditions") or {}
            ready = cond.get("ready") is not False
            labels = meta.get("labels") or {}
            return Listing(slice=str(meta.get("name", "")), service=labels.get(SERVICE_LABEL), ready=ready,
                           serving=cond.get("serving", ready) is not False, terminating=cond.get("terminating") is True)
    return None


class SliceTracker:
    """The slices that list this pod, kept from the list and the watch; `out_since` is t_out.

    The pod counts as routed while some slice lists it as ready. `out_since` is the monotonic time at which the
    tracker saw the last such slice turn not ready, or drop the pod, or go; None while a slice routes to the pod,
    and None for a pod that no slice has listed since the agent started (no Service selects it).
    """

    def __init__(self, pod: PodIdentity, clock: Callable[[], float]) -> None:
        self.pod, self.clock = pod, clock
        self.listings: dict[str, Listing] = {}
        self.resource_version: str | None = None
        self.synced = False  # a list has completed: the tracker knows the namespace's slices
        self.out_since: float | None = None  # since when no slice routes to the pod (None: routed, or never listed)
        self.version = 0  # bumped at every change of the pod's routing, for waiters

    def pod_in(self, obj: Mapping[str, Any]) -> bool:
        """Whether a slice object lists this pod (a list keeps only those)."""
        return listing_of(obj, self.pod) is not None

    @property
    def routed(self) -> bool:
        return any(listing.ready for listing in self.listings.values())

    def replace(self, items: Iterable[Mapping[str, Any]], resource_version: str) -> None:
        """A complete list (after the first connection or a 410): the slices it holds are all there are."""
        listings = {}
        for obj in items:
            listing = listing_of(obj, self.pod)
            if listing is not None:
                listings[listing.slice] = listing
        self.resource_version = resource_version
        self.synced = True
        self._set(listings)

    def apply(self, event: Mapping[str, Any]) -> Action:
        """One watch event (ADDED, MODIFIED, DELETED, BOOKMARK or ERROR)."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            gone = obj.get("code") == 410 or obj.get("reason") in ("Expired", "Gone")
            return Action.RELIST if gone else Action.REWATCH
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return Action.NONE  # BOOKMARK: only its resource version counts
        name = str((obj.get("metadata") or {}).get("name", ""))
        listing = None if kind == "DELETED" else listing_of(obj, self.pod)
        if listing is None and name not in self.listings:
            return Action.NONE  # a slice of another pod: nothing kept
        listings = dict(self.listings)
        if listing is None:
            del listings[name]
        else:
            listings[name] = listing
        self._set(listings)
        return Action.NONE

    def _set(self, listings: dict[str, Listing]) -> None:
        was_routed = self.routed
        self.listings = listings
        routed = self.routed
        if routed:
            self.out_since = None
        elif was_routed or (self.out_since is None and listings):  # out now, or listed for the first time unrouted
            self.out_since = self.clock()
        if routed != was_routed:
            self.version += 1

    def document(self) -> dict[str, Any]:
        """For /status: the slices that list the pod, and whether any routes to it."""
        return {"synced": self.synced, "routed": self.routed,
                "slices": [listing.document() for _, listing in sorted(self.listings.items())]}


def drain_end(started: float, drain_delay: float, cfg: EndpointsConfig, tracker: SliceTracker) -> Ending:
    """`max(started + min, t_out + margin)`, never later than `started + drain_delay`.

    Before the tracker's first list, the timer (without the feature or API access the watch never asks). While a
    slice still routes to the pod the answer is the timer too; the caller asks again at each change of the tracker.
    """
    cap = started + drain_delay
    if not tracker.synced:
        return timer(started, drain_delay)
    floor = started + min(cfg.min, drain_delay)
    if tracker.routed:
        return timer(started, drain_delay, "the pod is still ready in an EndpointSlice")
    if tracker.out_since is None:
        return Ending(floor, EndedBy.MIN, "the pod is in no EndpointSlice")
    at = tracker.out_since + cfg.margin
    if at <= floor:
        return Ending(floor, EndedBy.MIN, "the pod left its EndpointSlices before min")
    if at >= cap:
        return Ending(cap, EndedBy.TIMER, "the pod left its EndpointSlices too late for the margin")
    return Ending(at, EndedBy.ENDPOINTS, "the pod left its EndpointSlices")
