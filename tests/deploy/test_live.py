"""Each manifest's agent config, run for real: the probes' paths answer, and the footprint fits the resources.

The config comes out of the ConfigMap with the container's environment (the admin token from the Secret);
only the listen address is moved to a free loopback port. The app of the manifests is not running here,
so its checks fail: the paths must still be served (200 or 503, never 404), and /agent/* must pass.
"""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from agent.testing import run_agent
from tests.deploy.manifests import AGENT, KUBERNETES, Workload, size_bytes, workloads

WORKLOADS = workloads()
IDS = [w.name for w in WORKLOADS]
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def probe_paths(workload: Workload) -> list[tuple[str, str, str]]:
    """(container, probe kind, path) of every HTTP probe and hook in the pod that goes to the agent."""
    out = []
    for container in [*workload.pod.get("initContainers", []), *workload.pod["containers"]]:
        for kind in PROBES:
            if kind in container:
                out.append((container["name"], kind, container[kind]["httpGet"]["path"]))
    return out


@pytest.mark.parametrize("workload", WORKLOADS, ids=IDS)
def test_every_probe_path_of_the_manifest_is_served_by_its_config(workload: Workload) -> None:
    with run_agent(workload.config_text(), env=workload.env()) as agent:
        agent.wait_status("/agent/readyz", 200)
        for container, kind, path in probe_paths(workload):
            code, body = agent.get(path)
            assert code in (200, 503), f"{container} {kind} {path}: {code} {body}"
            if container == AGENT:
                assert code == 200, f"the agent's own {kind} {path} fails: {body}"
        # The app is absent here: its liveness check fails, which proves the probe answers come from the config.
        assert agent.status()["app"]["found"] is False


@pytest.mark.parametrize("workload", WORKLOADS, ids=IDS)
def test_the_agent_fits_its_resources_with_the_manifests_config(workload: Workload) -> None:
    resources = workload.agent["resources"]
    with run_agent(workload.config_text(), env=workload.env()) as agent:
        agent.wait_status("/agent/readyz", 200)
        rss = psutil.Process(agent.proc.pid).memory_info().rss
    assert rss <= size_bytes(resources["requests"]["memory"]), f"{rss / 2**20:.1f} MiB resident"
    # The CPU it takes to start, against the CPU limit, is measured in bench/bench_startup.py (timing, not asserted).


def test_the_manifests_pass_the_agents_own_lint() -> None:
    """`sidecar-agent lint` finds no probe or shutdown mistake in the manifests."""
    command = [sys.executable, "-m", "agent", "lint"]
    done = subprocess.run([*command, "--format", "json", str(KUBERNETES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["findings"] == [] and report["summary"]["objects"] >= 3
