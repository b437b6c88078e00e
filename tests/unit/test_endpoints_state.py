"""The endpoints drain's pure core: recorded EndpointSlice watch events on a fake clock, and the drain's end."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import EndpointsConfig
from agent.kube.drain import EndedBy
from agent.kube.endpoints_state import (
    Action,
    PodIdentity,
    SliceTracker,
    drain_end,
    listing_of,
)
from agent.testing import FakeClock

ME = PodIdentity("shop", "web-7d9f-abcde", frozenset({"198.18.200.7", "2001:db8::7"}))
CFG = EndpointsConfig(min=1.0, margin=1.0)


def endpoint(pod: str, ip: str, *, ready: bool | None = True, serving: bool | None = None,
             terminating: bool | None = None, ref: bool = True) -> dict[str, Any]:
    """One endpoint as the EndpointSlice controller writes it."""
    conditions = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating))
                  if v is not None}
    out: dict[str, Any] = {"addresses": [ip], "conditions": conditions, "nodeName": "node-1"}
    if ref:
        out["targetRef"] = {"kind": "Pod", "namespace": "shop", "name": pod, "uid": f"uid-{pod}"}
    return out


def eps(name: str, rv: int, *endpoints: dict[str, Any], service: str = "web") -> dict[str, Any]:
    """An EndpointSlice object as the API serves it."""
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": str(rv),
                         "labels": {"kubernetes.io/service-name": service,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "endpoints": list(endpoints), "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def watch(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def mine(ready: bool | None = True, serving: bool | None = None, terminating: bool | None = None) -> dict[str, Any]:
    """This pod's endpoint (ME, by its IPv4 address), with the conditions given."""
    return endpoint(ME.name, "198.18.200.7", ready=ready, serving=serving, terminating=terminating)


OTHER = endpoint("web-7d9f-zzzzz", "198.18.200.9")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> SliceTracker:
    return SliceTracker(ME, clock)


def test_the_downward_api_env_names_the_pod() -> None:
    pod = PodIdentity.from_env({"POD_NAME": "web-1", "POD_IPS": "198.18.200.7,2001:db8::7"}, namespace="shop")
    assert pod == PodIdentity("shop", "web-1", frozenset({"198.18.200.7", "2001:db8::7"}))
    assert PodIdentity.from_env({"POD_IPS": "198.18.200.7"}, namespace=None) is None  # no namespace
    assert PodIdentity.from_env({"POD_NAMESPACE": "shop"}) is None  # neither a name nor an address


def test_a_slice_lists_the_pod_by_target_ref_or_by_address() -> None:
    by_ref = listing_of(eps("web-a", 1, OTHER, endpoint("web-7d9f-abcde", "198.18.201.9")), ME)
    assert by_ref is not None and by_ref.service == "web" and by_ref.ready
    by_address = listing_of(eps("web-a", 1, endpoint("", "2001:db8::7", ref=False)), ME)
    assert by_address is not None
    assert listing_of(eps("web-a", 1, OTHER), ME) is None
    # The same name in another namespace is another pod.
    foreign = endpoint("web-7d9f-abcde", "198.18.201.9")
    foreign["targetRef"]["namespace"] = "other"
    assert listing_of(eps("web-a", 1, foreign), ME) is None


def test_conditions_left_out_read_as_the_api_says() -> None:
    listing = listing_of(eps("web-a", 1, mine(ready=None)), ME)
    assert listing is not None and listing.ready and listing.serving and not listing.terminating


def test_before_the_first_list_the_drain_is_the_timer(tracker: SliceTracker) -> None:
    ending = drain_end(1000.0, 5.0, CFG, tracker)
    assert (ending.at, ending.ended_by) == (1005.0, EndedBy.TIMER)


def test_a_pod_in_no_slice_drains_for_min(tracker: SliceTracker) -> None:
    tracker.replace([eps("web-a", 10, OTHER)], "11")
    assert tracker.synced and not tracker.listings and tracker.resource_version == "11"
    ending = drain_end(1000.0, 5.0, CFG, tracker)
    assert (ending.at, ending.ended_by) == (1001.0, EndedBy.MIN)


def test_the_pod_added_then_made_not_ready_ends_the_drain_a_margin_later(clock: FakeClock,
                                                                          tracker: SliceTracker) -> None:
    tracker.replace([eps("web-a", 10, OTHER)], "10")
    tracker.apply(watch("ADDED", eps("web-b", 12, mine())))
    assert tracker.routed and tracker.out_since is None
    clock.advance(60)
    started = clock()  # the stop begins; the pod is still ready in web-b
    assert drain_end(started, 5.0, CFG, tracker).ended_by is EndedBy.TIMER
    clock.advance(2.5)  # the endpoints controller marks the terminating pod not ready (still serving)
    tracker.apply(watch("MODIFIED", eps("web-b", 13, mine(ready=False, serving=True, terminating=True))))
    assert not tracker.routed and tracker.out_since == started + 2.5
    clock.advance(1.0)  # the kubelet's readiness probe fails: no longer serving; t_out stays
    tracker.apply(watch("MODIFIED", eps("web-b", 14, mine(ready=False, serving=False, terminating=True))))
    assert tracker.out_since == started + 2.5
    ending = drain_end(started, 5.0, CFG, tracker)
    assert (ending.at, ending.ended_by) == (started + 3.5, EndedBy.ENDPOINTS)
    assert tracker.listings["web-b"].terminating and tracker.resource_version == "14"


def test_a_pod_removed_from_its_slice_is_out(clock: FakeClock, tracker: SliceTracker) -> None:
    tracker.replace([eps("web-a", 10, OTHER, mine())], "10")
    started = clock()
    clock.advance(1.8)
    tracker.apply(watch("MODIFIED", eps("web-a", 11, OTHER)))
    assert not tracker.listings and tracker.out_since == started + 1.8
    assert drain_end(started, 5.0, CFG, tracker).ended_by is EndedBy.ENDPOINTS


def test_every_slice_that_listed_the_pod_must_show_it_out(clock: FakeClock, tracker: SliceTracker) -> None:
    tracker.replace([eps("web-a", 10, mine()), eps("admin-a", 10, mine(), service="admin")], "10")
    started = clock()
    clock.advance(1)
    tracker.apply(watch("DELETED", eps("web-a", 11, mine())))
    assert tracker.routed and drain_end(started, 5.0, CFG, tracker).ended_by is EndedBy.TIMER
    clock.advance(1)
    tracker.apply(watch("MODIFIED", eps("admin-a", 12, mine(ready=False), service="admin")))
    ending = drain_end(started, 5.0, CFG, tracker)
    assert (ending.at, ending.ended_by) == (started + 3.0, EndedBy.ENDPOINTS)


def test_a_slice_replaced_by_another_that_lists_the_pod_keeps_it_routed(clock: FakeClock,
                                                                        tracker: SliceTracker) -> None:
    tracker.replace([eps("web-a", 10, mine())], "10")
    # The controller creates the new slice first, then deletes the old one.
    tracker.apply(watch("ADDED", eps("web-c", 11, mine())))
    tracker.apply(watch("DELETED", eps("web-a", 12, mine())))
    assert tracker.routed and set(tracker.listings) == {"web-c"}
    # In the other order the pod is out for a moment, and back in when the new slice comes.
    tracker.apply(watch("DELETED", eps("web-c", 13, mine())))
    assert tracker.out_since == clock()
    tracker.apply(watch("ADDED", eps("web-d", 14, mine())))
    assert tracker.routed and tracker.out_since is None


def test_out_before_the_stop_drains_for_min(clock: FakeClock, tracker: SliceTracker) -> None:
    tracker.replace([eps("web-a", 10, mine(ready=False))], "10")
    assert tracker.out_since == clock()  # listed, not ready: out since the list
    clock.advance(30)
    ending = drain_end(clock(), 5.0, CFG, tracker)
    assert (ending.at, ending.ended_by) == (clock() + 1.0, EndedBy.MIN)


def test_out_too_late_for_the_margin_ends_at_drain_delay(clock: FakeClock, tracker: SliceTracker) -> None:
    tracker.replace([eps("web-a", 10, mine())], "10")
    started = clock()
    clock.advance(4.5)
    tracker.apply(watch("DELETED", eps("web-a", 11)))
    ending = drain_end(started, 5.0, CFG, tracker)
    assert (ending.at, ending.ended_by) == (started + 5.0, EndedBy.TIMER)


def test_410_gone_asks_for_a_list_which_replaces_everything(clock: FakeClock, tracker: SliceTracker) -> None:
    tracker.replace([eps("web-a", 10, mine())], "10")
    gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "message": "too old resource version: 10 (20)", "reason": "Expired",
                                        "code": 410}}
    assert tracker.apply(gone) is Action.RELIST
    assert tracker.resource_version == "10"  # an error event carries no version to resume from
    clock.advance(3)
    # While the watch was gone, web-a was deleted and web-e lists the pod as not ready.
    tracker.replace([eps("web-e", 25, mine(ready=False))], "25")
    assert set(tracker.listings) == {"web-e"} and tracker.out_since == clock() and tracker.resource_version == "25"
    other_error = {"type": "ERROR", "object": {"kind": "Status", "code": 500, "reason": "InternalError"}}
    assert tracker.apply(other_error) is Action.REWATCH


def test_a_bookmark_moves_the_resource_version_only(tracker: SliceTracker) -> None:
    tracker.replace([eps("web-a", 10, mine())], "10")
    before = dict(tracker.listings), tracker.version
    bookmark = {"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                               "metadata": {"resourceVersion": "42",
                                                            "annotations": {"k8s.io/initial-events-end": "true"}}}}
    assert tracker.apply(bookmark) is Action.NONE
    assert tracker.resource_version == "42" and (dict(tracker.listings), tracker.version) == before


def test_memory_keeps_only_the_slices_that_list_the_pod(tracker: SliceTracker) -> None:
    tracker.replace([eps(f"other-{i}", i, endpoint(f"p{i}", f"10.2.{i // 250}.{i % 250}")) for i in range(2000)],
                    "2000")
    for i in range(2000):
        tracker.apply(watch("MODIFIED", eps(f"other-{i}", 2000 + i, OTHER)))
    assert tracker.listings == {} and tracker.resource_version == "3999"
