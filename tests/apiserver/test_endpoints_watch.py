"""The EndpointSlice watch against a real kube-apiserver: list, watch, the drain's decision, 403, token rotation,
410 Gone, the API unreachable, and the pod's deletionTimestamp."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import EndpointsConfig, EndpointsMode
from agent.kube import endpoints_client
from agent.kube.drain import EndedBy
from agent.kube.endpoints_client import EndpointsWatch, WatchState
from agent.runtime.tasks import Tasks
from tests.apiserver.conftest import IP, POD, Namespace, endpoint, endpoint_slice, new_namespace, slices_path
from tests.apiserver.harness import ApiServer

# The session's API server may first be built (tools/cluster.py build): only the test itself is timed.
pytestmark = pytest.mark.timeout(120, func_only=True)

CFG = EndpointsConfig(enabled=EndpointsMode.ON, min=1.0, margin=1.0)
BOUND = 60.0  # a bound for a hang only: each wait below is for an event the API sends


async def until(what: str, condition: Callable[[], bool], watch: EndpointsWatch) -> None:
    """Wait for `condition`, waking at each change the watch reports (and every 0.5 s for the other counters)."""
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BOUND:g}s: {what}; the watch: {watch.document()}")
        changed = watch.changed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), 0.5)


def refused(ns: Namespace, token: str) -> None:
    """Wait until the API refuses `token` (401)."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        if ns.api.status_as(token, slices_path(ns)) == 401:
            return
        time.sleep(0.2)
    raise AssertionError(f"the old token still works after {BOUND:g}s")


@contextlib.asynccontextmanager
async def started(ns: Namespace, account: Path, **tuning: Any) -> AsyncIterator[EndpointsWatch]:
    watch = endpoints_client.build(CFG, ns.env(POD, IP), clock=time.monotonic, account=account, **tuning)
    watch.start(Tasks())
    try:
        yield watch
    finally:
        await watch.close()


async def test_the_watch_follows_the_pod_into_and_out_of_its_slices(namespace: Namespace, granted: Path) -> None:
    namespace.create("/apis/discovery.k8s.io/v1", endpoint_slice("other-a", endpoint("other", "198.18.200.9", namespace.name),
                                                                   service="other"))
    async with started(namespace, granted) as watch:
        await until("live", lambda: watch.live, watch)
        assert watch.tracker.listings == {}
        now = time.monotonic()
        assert watch.ending(now, 5.0).ended_by is EndedBy.MIN  # in no slice: min
        namespace.create("/apis/discovery.k8s.io/v1", endpoint_slice("web-a", endpoint(POD, IP, namespace.name)))
        await until("the pod routed", lambda: watch.tracker.routed, watch)
        assert [s["slice"] for s in watch.document()["slices"]] == ["web-a"]
        assert watch.ending(time.monotonic(), 5.0).ended_by is EndedBy.TIMER
        stop = time.monotonic()
        namespace.mark_not_ready("web-a")
        await until("the pod out", lambda: not watch.tracker.routed, watch)
        ending = watch.ending(stop, 30.0)
        assert ending.ended_by is EndedBy.ENDPOINTS and ending.at == watch.tracker.out_since + 1.0
        # The slice deleted: still out, and no slice kept.
        namespace.api.call("DELETE", slices_path(namespace, "web-a"))
        await until("the slice gone", lambda: not watch.tracker.listings, watch)
        assert watch.state is WatchState.WATCHING and watch.lists == 1


async def test_without_the_role_the_drain_is_the_timer_until_the_role_is_granted(namespace: Namespace,
                                                                               tmp_path: Path,
                                                                               caplog: pytest.LogCaptureFixture) -> None:
    namespace.service_account("web")
    account = namespace.account_dir(tmp_path / "sa", namespace.token("web"))
    with caplog.at_level("INFO", logger="agent.endpoints"):
        async with started(namespace, account) as watch:
            await until("two refusals", lambda: watch.failures >= 2, watch)
            assert watch.state is WatchState.FALLBACK and not watch.live
            assert watch.reason is not None and "403" in watch.reason and "Role" in watch.reason
            assert watch.ending(time.monotonic(), 5.0).ended_by is EndedBy.TIMER
            fallbacks = [r.message for r in caplog.records if "falls back to the timer" in r.message]
            assert len(fallbacks) == 1, fallbacks  # said once, however many times it is refused
            namespace.grant("web")
            await until("live once granted", lambda: watch.live, watch)


async def test_a_rotated_token_is_read_again(namespace: Namespace, tmp_path: Path) -> None:
    namespace.service_account("web")
    namespace.grant("web")
    holder = namespace.api.call("POST", f"/api/v1/namespaces/{namespace.name}/secrets",
                                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "holder"}})
    first = namespace.token("web", bound_to=("Secret", "holder", holder["metadata"]["uid"]))
    account = namespace.account_dir(tmp_path / "sa", first)
    async with started(namespace, account, watch_seconds=2) as watch:
        await until("live", lambda: watch.live, watch)
        # The kubelet writes a new token; the old one stops working (its secret is deleted).
        (account / "token").write_text(namespace.token("web"))
        namespace.api.call("DELETE", f"/api/v1/namespaces/{namespace.name}/secrets/holder")
        await asyncio.to_thread(refused, namespace, first)
        target = watch.watches + 2
        await until("two more watches", lambda: watch.watches >= target, watch)
        assert watch.state is WatchState.WATCHING and watch.failures == 0


async def test_410_gone_lists_again(uncached_apiserver: ApiServer, tmp_path: Path) -> None:
    namespace = new_namespace(uncached_apiserver)
    namespace.service_account("web")
    namespace.grant("web")
    granted = namespace.account_dir(tmp_path / "sa", namespace.token("web"))
    async with started(namespace, granted, watch_seconds=2) as watch:
        await until("live", lambda: watch.live, watch)
        def expired() -> bool:
            # Resume each watch from revision 1 until etcd has compacted past it (every 3 s in the harness) and the
            # API answers 410 Gone, which makes the agent list again.
            if watch.lists < 2:
                watch.tracker.resource_version = "1"
            return watch.lists >= 2

        await until("a second list", expired, watch)
        await until("live again", lambda: watch.live, watch)
        assert int(watch.tracker.resource_version or 0) > 1


async def test_an_unreachable_api_is_the_timer_and_says_why(namespace: Namespace, granted: Path) -> None:
    env = {**namespace.env(POD, IP), "KUBERNETES_SERVICE_PORT": "1"}  # nothing listens on port 1
    watch = endpoints_client.build(CFG, env, clock=time.monotonic, account=granted)
    watch.start(Tasks())
    try:
        await until("a failure", lambda: watch.failures >= 1, watch)
        assert watch.state is WatchState.FALLBACK and watch.reason is not None
        assert watch.reason.startswith("the API is not reachable")
        assert watch.ending(time.monotonic(), 5.0).ended_by is EndedBy.TIMER
    finally:
        await watch.close()


async def test_no_token_means_no_watch_and_the_timer(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1", "POD_NAME": POD,
           "POD_NAMESPACE": "shop"}
    watch = endpoints_client.build(CFG, env, clock=time.monotonic, account=tmp_path)
    watch.start(Tasks())
    assert watch.state is WatchState.OFF and "no service-account token" in (watch.reason or "")
    assert watch.ending(1000.0, 5.0).at == 1005.0
    assert await watch.pod_deleted() is None
    await watch.close()


async def test_the_pods_deletion_timestamp_tells_a_deletion(namespace: Namespace, granted: Path) -> None:
    # A pod bound to a node that runs no kubelet: its graceful deletion sets deletionTimestamp and waits.
    namespace.unscheduled_pod()
    async with started(namespace, granted) as watch:
        assert await watch.pod_deleted() is False
        namespace.api.call("DELETE", f"/api/v1/namespaces/{namespace.name}/pods/{POD}")
        assert await watch.pod_deleted() is True
