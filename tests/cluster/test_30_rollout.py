"""Scenario 2: a rolling update under load through a Service's ClusterIP (kube-proxy), with the agent injected
(native sidecar, and a regular container for 1.28) and without it: 0 failed requests with it; the plain Deployment in
the same run must lose some, or the scenario would prove nothing."""

from __future__ import annotations

import time

import pytest

from tests.cluster.harness import Cluster, wait_until
from tests.cluster.load import Load
from tests.cluster.workloads import deployment, inject

pytestmark = pytest.mark.timeout(360, func_only=True)

NS = "rollout"
RESULTS: dict[str, Load] = {}


def roll(cluster: Cluster, name: str, manifest: str) -> Load:
    """Deploys, waits Ready, restarts the rollout under load; the load once every old pod is gone."""
    if cluster.kubectl("get", "namespace", NS, check=False).returncode != 0:
        cluster.namespace(NS)
    cluster.apply(manifest, "-n", NS)
    old = {p["metadata"]["name"] for p in cluster.wait_ready(NS, f"app={name}", 3, timeout=120)}
    ip = cluster.get("service", "-n", NS, name)["spec"]["clusterIP"]
    with Load(ip, 80) as load:
        time.sleep(3)  # the pool's connections spread over the old pods
        started = time.monotonic()
        cluster.kubectl("rollout", "restart", "-n", NS, f"deployment/{name}")
        cluster.kubectl("rollout", "status", "-n", NS, f"deployment/{name}", "--timeout=240s", timeout=250)
        wait_until("every old pod gone", lambda: not old & {p["metadata"]["name"] for p in cluster.pods(NS, f"app={name}")},
                   120, 1)
        time.sleep(3)
    print(f"{name}: rollout in {time.monotonic() - started:.1f} s; new connections {load.fresh}; pool {load.pooled}")
    cluster.kubectl("delete", "-n", NS, "deployment", name, "--wait=false")
    return load


def test_without_the_agent_a_rollout_loses_requests(cluster: Cluster) -> None:
    load = roll(cluster, "plain", deployment("plain"))
    assert load.fresh.ok > 100 and load.pooled.ok > 100
    assert load.fresh.failed + load.pooled.failed > 0, "the baseline lost nothing: the scenario proves nothing"


@pytest.mark.parametrize("version", [None, "1.28"], ids=["native", "regular-1.28"])
def test_with_the_agent_a_rollout_loses_no_request(cluster: Cluster, version: str | None) -> None:
    name = "native" if version is None else "regular"
    load = roll(cluster, name, inject(deployment(name), version))
    assert load.fresh.ok > 100 and load.pooled.ok > 100
    assert (load.fresh.failed, load.pooled.failed) == (0, 0), (load.fresh.errors, load.pooled.errors)
    assert len(load.fresh.pods) >= 6  # old and new pods both answered
