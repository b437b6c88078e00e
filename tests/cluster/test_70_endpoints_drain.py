"""Issue 20 on the real cluster: the drain ends when the pod has left its Services' EndpointSlices.

Scenario 2's rollout (tests/cluster/rolling.py: 3 replicas behind a ClusterIP, a new-connection client and a keep-alive
pool, no retries) with the agent injected by `inject --drain endpoints` and the Role of
deploy/kubernetes/endpoints-rbac.yaml: no request lost, and each old pod's agent logs a drain the slices ended
(`endpoints`, or `min` when the pod was out before min), well before drain_delay. The same rollout with the Role removed: each drain is the timer (the log says why once), and
still no request lost. A pod behind no Service drains for `min`. The drains' lengths are read from each agent's log
(its `drain over after` line), followed with `kubectl logs -f` from before the rollout until the container ends."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

import pytest

from tests.cluster.harness import ROOT, Cluster, wait_until
from tests.cluster.rolling import assert_lossless, roll
from tests.cluster.workloads import deployment, inject, pod

pytestmark = pytest.mark.timeout(420, func_only=True)

DRAIN = 5.0  # the injected drain_delay
MIN = 1.0  # shutdown.endpoints.min's default
ACCOUNT = "web"  # the service account endpoints-rbac.yaml binds
AGENT = "sidecar-agent"  # the injected container
DRAINS: dict[str, list[float]] = {}  # ended_by (endpoints, timer): each old pod's drain, in this run


class AgentLogs:
    """Each pod's agent log, followed (`kubectl logs -f`) into a file until the container ends."""

    def __init__(self, cluster: Cluster, namespace: str, pods: list[dict[str, Any]]) -> None:
        self.followers: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}
        for item in pods:
            name = item["metadata"]["name"]
            out = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the follower, closed in close()
            proc = subprocess.Popen([*cluster.base, "logs", "-f",
                                     "-n", namespace, name, "-c", AGENT], stdout=out, stderr=subprocess.STDOUT)
            self.followers[name] = (proc, out)

    def records(self, name: str) -> list[dict[str, Any]]:
        """The JSON lines logged so far by one pod's agent."""
        out = self.followers[name][1]
        out.seek(0)
        found = []
        for line in out.read().decode(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                found.append(record)
        return found

    def ended(self, timeout: float) -> dict[str, list[dict[str, Any]]]:
        """Each pod's records once its agent's log has ended (the container gone); the followers stopped."""
        try:
            for name, (proc, _) in self.followers.items():
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"the agent's log of {name} did not end in {timeout} s") from None
            return {name: self.records(name) for name in self.followers}
        finally:
            self.close()

    def close(self) -> None:
        """Stops the followers still running (only those this object started) and closes their files."""
        for proc, out in self.followers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            out.close()


def drain_of(name: str, records: list[dict[str, Any]]) -> tuple[str, float, str]:
    """A pod's drain as its agent logged it: (ended_by, seconds, why)."""
    over = [r for r in records if str(r.get("message", "")).startswith("drain over after")]
    assert len(over) == 1, f"{name}: {len(over)} 'drain over' lines in {[r.get('message') for r in records]}"
    why = str(over[0]["message"]).split(": ", 1)[1]
    return str(over[0]["drain_ended_by"]), float(over[0]["drained_after_seconds"]), why


def rbac(cluster: Cluster, namespace: str, role: bool) -> None:
    """The namespace with deploy/kubernetes/endpoints-rbac.yaml applied; its Role deleted unless `role`."""
    cluster.namespace(namespace)
    cluster.apply((ROOT / "deploy" / "kubernetes" / "endpoints-rbac.yaml").read_text(), "-n", namespace)
    if not role:
        cluster.kubectl("delete", "-n", namespace, "role", "sidecar-agent-endpoints")


def endpoints_deployment(name: str) -> str:
    """The test app, its pods run as the service account the RBAC binds, injected with `--drain endpoints`."""
    return inject(deployment(name, service_account=ACCOUNT), None, "--drain", "endpoints")


def rolled(cluster: Cluster, namespace: str, name: str) -> tuple[Any, dict[str, list[dict[str, Any]]]]:
    """Scenario 2's rollout of `name`, each old pod's agent log followed: the load and those logs."""
    logs: list[AgentLogs] = []

    def follow(pods: list[dict[str, Any]]) -> None:
        logs.append(AgentLogs(cluster, namespace, pods))

    try:
        load = roll(cluster, namespace, name, endpoints_deployment(name), on_old=follow)
        return load, logs[0].ended(60)
    finally:
        for each in logs:
            each.close()


def summary(values: list[float]) -> str:
    """Median and spread (min to max) of drains, in seconds."""
    return f"median {statistics.median(values):.2f} s, spread {min(values):.2f} to {max(values):.2f} s (n={len(values)})"


def test_a_rollout_drains_until_the_pods_left_their_endpoints(cluster: Cluster) -> None:
    rbac(cluster, "drain-endpoints", role=True)
    load, logs = rolled(cluster, "drain-endpoints", "endpoints")
    assert_lossless(load)
    assert len(load.fresh.pods) >= 6  # old and new pods both answered
    drains = {name: drain_of(name, records) for name, records in logs.items()}
    print(f"endpoints drains: {drains}", file=sys.stderr)
    # The slices ended each drain: the pod was in one and left it. On this cluster the EndpointSlice controller
    # marks a deleted pod not ready (terminating) as soon as its deletionTimestamp is set, before the kubelet runs
    # the preStop hook that starts the drain; t_out + margin then falls before start + min, and min is the larger
    # of the two (ended_by `min`, "before min": docs/shutdown.md). `endpoints` when the slice shows it later.
    left = {"endpoints": "the pod left its EndpointSlices", "min": "the pod left its EndpointSlices before min"}
    assert all(left.get(ended_by) == why for ended_by, _, why in drains.values()), drains
    seconds = [s for _, s, _ in drains.values()]
    assert all(MIN <= s <= DRAIN - 1 for s in seconds), drains  # well before drain_delay
    DRAINS["endpoints"] = seconds


def test_without_the_role_the_drain_is_the_timer_and_no_request_is_lost(cluster: Cluster) -> None:
    rbac(cluster, "drain-timer", role=False)
    load, logs = rolled(cluster, "drain-timer", "timer")
    assert_lossless(load)
    drains = {name: drain_of(name, records) for name, records in logs.items()}
    print(f"timer drains: {drains}", file=sys.stderr)
    assert {ended_by for ended_by, _, _ in drains.values()} == {"timer"}, drains
    assert all(DRAIN <= s < DRAIN + 3 for _, s, _ in drains.values()), drains
    for name, records in logs.items():  # why, said once: the API's 403
        why = [r["message"] for r in records if r.get("endpoints") in ("fallback", "off")]
        assert len(why) == 1, (name, why)
        assert "forbidden" in why[0], why
    DRAINS["timer"] = [s for _, s, _ in drains.values()]
    if "endpoints" in DRAINS:  # the same run's figures, side by side
        print(f"\nendpoints drain: {summary(DRAINS['endpoints'])}; timer (drain_delay {DRAIN:g} s): "
              f"{summary(DRAINS['timer'])}", file=sys.stderr)


def test_a_pod_behind_no_service_drains_for_min(cluster: Cluster) -> None:
    namespace, name = "drain-lonely", "lonely"
    rbac(cluster, namespace, role=True)
    cluster.apply(inject(pod(name, service_account=ACCOUNT), None, "--drain", "endpoints"), "-n", namespace)
    ready = cluster.wait_ready(namespace, f"app={name}", 1, timeout=120)
    logs = AgentLogs(cluster, namespace, ready)
    try:
        wait_until("the agent watching the EndpointSlices",
                   lambda: any(r.get("endpoints") == "watching" for r in logs.records(name)), 60)
        started = time.monotonic()
        cluster.kubectl("delete", "pod", "-n", namespace, name, "--wait=false")
        ended_by, seconds, why = drain_of(name, logs.ended(60)[name])
    finally:
        logs.close()
    print(f"{name}: drain ended by {ended_by} after {seconds:.2f} s (pod gone {time.monotonic() - started:.1f} s "
          "after the delete)", file=sys.stderr)
    assert (ended_by, why) == ("min", "the pod is in no EndpointSlice")
    assert MIN <= seconds < DRAIN
