"""A rolling update under load through a Service's ClusterIP: scenario 2's procedure, shared by the scenarios that
roll a Deployment (test_30_rollout.py, test_70_endpoints_drain.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.cluster.harness import Cluster, wait_until
from tests.cluster.load import Load


def roll(cluster: Cluster, namespace: str, name: str, manifest: str,
         on_old: Callable[[list[dict[str, Any]]], None] | None = None) -> Load:
    """Deploys into `namespace` (made when missing), waits Ready, restarts the rollout under load; the load once every
    old pod is gone. `on_old`: called with the old pods, Ready, before the load starts (to follow their logs)."""
    cluster.existing_namespace(namespace)
    cluster.apply(manifest, "-n", namespace)
    pods = cluster.wait_ready(namespace, f"app={name}", 3, timeout=120)
    old = {p["metadata"]["name"] for p in pods}
    if on_old is not None:
        on_old(pods)
    ip = cluster.get("service", "-n", namespace, name)["spec"]["clusterIP"]
    with Load(ip, 80) as load:
        time.sleep(3)  # the pool's connections spread over the old pods
        started = time.monotonic()
        cluster.kubectl("rollout", "restart", "-n", namespace, f"deployment/{name}")
        cluster.kubectl("rollout", "status", "-n", namespace, f"deployment/{name}", "--timeout=240s", timeout=250)
        wait_until("every old pod gone",
                   lambda: not old & {p["metadata"]["name"] for p in cluster.pods(namespace, f"app={name}")}, 120, 1)
        time.sleep(3)
    print(f"{name}: rollout in {time.monotonic() - started:.1f} s; new connections {load.fresh}; pool {load.pooled}")
    cluster.kubectl("delete", "-n", namespace, "deployment", name, "--wait=false")
    return load


def assert_lossless(load: Load) -> None:
    """Both clients were served throughout, and neither lost a request."""
    assert load.fresh.ok > 100 and load.pooled.ok > 100
    assert (load.fresh.failed, load.pooled.failed) == (0, 0), (load.fresh.errors, load.pooled.errors)
