"""Scenario 3: a pod's termination as the kubelet runs it, per sidecar mode: the agent's readiness answers 503 at
once, the app gets its SIGTERM only after the drain (its containers' finishedAt), and a native sidecar ends last;
a Job with the injected agent completes and its pod ends Succeeded."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
import yaml

from tests.cluster.harness import Cluster, http_get, timestamp, wait_until
from tests.cluster.workloads import APP, inject, pod

pytestmark = pytest.mark.timeout(240, func_only=True)

NS = "termination"
DRAIN = 5.0  # the injected drain_delay (docs/inject.md)
GRACE = 30.0  # the pods' terminationGracePeriodSeconds (tests/cluster/workloads.py)
MODES = [(None, "native"), ("1.29", "native-1.29"), ("1.28", "regular-1.28")]


def _watch_until_deleted(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The pod's last state from `kubectl get -w --output-watch-events -o json`: the DELETED event's object."""
    decoder, buffer, last = json.JSONDecoder(), "", {}
    deadline = time.monotonic() + timeout
    assert proc.stdout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        buffer += line
        try:
            event, end = decoder.raw_decode(buffer.lstrip())
        except ValueError:
            continue
        buffer = buffer.lstrip()[end:]
        last = event["object"]
        if event["type"] == "DELETED":
            return dict(last)
    raise AssertionError(f"no DELETED event within {timeout} s; last state {last.get('status')}")


@pytest.mark.parametrize(("version", "mode"), MODES, ids=[m for _, m in MODES])
def test_termination_order(cluster: Cluster, version: str | None, mode: str) -> None:
    cluster.existing_namespace(NS)
    name = f"term-{mode.replace('.', '')}"
    cluster.kubectl("delete", "pod", "-n", NS, name, "--ignore-not-found")
    cluster.apply(inject(pod(name), version), "-n", NS)
    ready = cluster.wait_ready(NS, f"app={name}", 1, timeout=90)[0]
    pod_name, ip = ready["metadata"]["name"], ready["status"]["podIP"]
    base = [*cluster.base, "-n", NS]
    with subprocess.Popen([*base, "get", "pod", pod_name, "-w", "--output-watch-events", "-o", "json"],
                          stdout=subprocess.PIPE, text=True) as watch, \
         subprocess.Popen([*base, "logs", "-f", pod_name, "-c", "sidecar-agent"], stdout=subprocess.PIPE, text=True) as logs:
        time.sleep(1)
        t0 = time.time()
        cluster.kubectl("delete", "pod", "-n", NS, pod_name, "--wait=false")
        deleted = time.time()  # the API server has the deletion: the kubelet hears of it from here on
        first_503 = wait_until("/readyz 503", lambda: _readyz(ip) == 503 and time.time(), 60, 0.05)  # a hang bound
        final = _watch_until_deleted(watch, 90)
        watch.terminate()
        agent_log = logs.communicate(timeout=30)[0]
    statuses = {s["name"]: s for s in final["status"].get("containerStatuses", []) +
                final["status"].get("initContainerStatuses", [])}
    app_end = timestamp(statuses["app"]["state"]["terminated"]["finishedAt"])
    agent_end = timestamp(statuses["sidecar-agent"]["state"]["terminated"]["finishedAt"])
    print(f"{mode}: readiness 503 {first_503 - deleted:.2f} s after the deletion returned, {app_end - first_503:.1f} s "
          f"before the app finished at +{app_end - t0:.1f} s, agent at +{agent_end - t0:.1f} s (finishedAt has 1 s "
          "resolution)")
    # Readiness fails when the drain starts (the agent's own preStop call, or its SIGTERM), not late in it: the app,
    # stopped after the drain, finishes about the drain later (less finishedAt's truncation to the second and this
    # poll's own delay, hence half). How soon the kubelet acts on the deletion is its latency, not bounded here.
    assert app_end - first_503 >= DRAIN / 2
    assert app_end - t0 >= DRAIN - 1.0  # its SIGTERM came after the drain, not at t=0
    assert app_end - t0 < GRACE - 1.0  # ... and from the drain's end, not the grace period's SIGKILL (truncated: -1)
    if version != "1.28":
        assert agent_end >= app_end  # a native sidecar is stopped after the app has exited
    assert "shutdown started by" in agent_log and "draining for 5s" in agent_log, agent_log[-2000:]


def _readyz(ip: str) -> int:
    try:
        return http_get(ip, 8686, "/readyz", timeout=1)[0]
    except OSError:
        return 0


def job(name: str) -> str:
    """A Job whose one container works 3 s and exits 0."""
    return yaml.safe_dump({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "containers": [{"name": "work", "image": APP, "imagePullPolicy": "Never",
                            "command": ["python", "-c", "import time; time.sleep(3); print('done')"]}]}}}},
        sort_keys=False)


@pytest.mark.parametrize(("version", "mode"), [(None, "native"), ("1.28", "regular-1.28")], ids=["native", "regular-1.28"])
def test_an_injected_job_succeeds(cluster: Cluster, version: str | None, mode: str) -> None:
    cluster.existing_namespace(NS)
    name = f"job-{mode.replace('.', '')}"
    cluster.kubectl("delete", "job", "-n", NS, name, "--ignore-not-found")
    started = time.monotonic()
    cluster.apply(inject(job(name), version), "-n", NS)
    assert wait_until(f"Job {name} to finish", lambda: cluster.job_outcome(NS, name), 120, 1) == "Complete"
    pods = cluster.pods(NS, f"job-name={name}")
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]
    print(f"{mode}: Job complete in {time.monotonic() - started:.1f} s")
