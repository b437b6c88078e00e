"""The whole agent against a real kube-apiserver: SIGTERM, then the drain ends when the pod leaves its slice, not at
drain_delay; without the Role it is the timer, and /status, the metric and the log say why."""

from __future__ import annotations

import datetime
import signal
import time
from pathlib import Path

import pytest

from agent.testing import run_agent
from tests.apiserver.conftest import IP, POD, Namespace, endpoint, endpoint_slice

# The session's API server may first be built (tools/cluster.py build): only the test itself is timed.
pytestmark = pytest.mark.timeout(120, func_only=True)

CONFIG = """
shutdown:
  drain_delay: 25s
  relay_signal: false
  grace_period: 40s
  endpoints: {enabled: true, min: 1s, margin: 1s}
"""
BOUND = 60.0  # a bound for a hang only


def agent_env(namespace: Namespace, account: Path) -> dict[str, str]:
    return {**namespace.env(POD, IP), "SIDECAR_AGENT_SERVICE_ACCOUNT_DIR": str(account)}


def test_the_drain_ends_when_the_pod_leaves_its_slice(namespace: Namespace, granted: Path) -> None:
    namespace.create("/apis/discovery.k8s.io/v1", endpoint_slice("web-a", endpoint(POD, IP, namespace.name)))
    with run_agent(CONFIG, env=agent_env(namespace, granted)) as agent:
        agent.wait_for(lambda: (agent.status()["endpoints"] or {}).get("routed"), timeout=BOUND)
        endpoints = agent.status()["endpoints"]
        assert endpoints["state"] == "watching" and [s["slice"] for s in endpoints["slices"]] == ["web-a"]
        assert "sidecar_shutdown_endpoints_up 1.0" in agent.get("/metrics")[1]
        agent.signal(signal.SIGTERM)
        agent.wait_status("/readyz", 503)
        # The endpoints controller's part: the terminating pod shown not ready.
        left_at = time.time()
        namespace.mark_not_ready("web-a")
        assert agent.wait_exit(timeout=BOUND) == 0
        over = [r for r in agent.log_records() if r["message"].startswith("drain over after")]
        assert len(over) == 1 and over[0]["message"].endswith(": the pod left its EndpointSlices"), over
        assert over[0]["drain_ended_by"] == "endpoints"
        # Not before the margin (1 s) after the pod left (the log's time has milliseconds; the clock is the same).
        ended_at = datetime.datetime.fromisoformat(str(over[0]["time"])).timestamp()
        assert ended_at >= left_at + 1.0 - 0.001, (ended_at - left_at, over)


def test_without_the_role_the_agent_drains_on_the_timer_and_says_why(namespace: Namespace, tmp_path: Path) -> None:
    namespace.service_account("web")
    account = namespace.account_dir(tmp_path / "sa", namespace.token("web"))
    config = CONFIG.replace("drain_delay: 25s", "drain_delay: 2s")
    with run_agent(config, env=agent_env(namespace, account)) as agent:
        agent.wait_for(lambda: (agent.status()["endpoints"] or {}).get("state") == "fallback", timeout=BOUND)
        endpoints = agent.status()["endpoints"]
        assert "403" in endpoints["reason"] and endpoints["slices"] == []
        assert "sidecar_shutdown_endpoints_up 0.0" in agent.get("/metrics")[1]
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit(timeout=BOUND) == 0
        fallbacks = [r["message"] for r in agent.log_records() if "falls back to the timer" in r["message"]]
        assert len(fallbacks) == 1, fallbacks  # said, and once
        over = [r for r in agent.log_records() if r["message"].startswith("drain over after")]
        assert len(over) == 1 and over[0]["drain_ended_by"] == "timer", over


def test_prestop_reads_the_pods_deletion(namespace: Namespace, granted: Path) -> None:
    namespace.unscheduled_pod()
    namespace.api.call("DELETE", f"/api/v1/namespaces/{namespace.name}/pods/{POD}")  # graceful: it stays, marked
    config = CONFIG.replace("drain_delay: 25s", "drain_delay: 1s")
    with run_agent(config, env=agent_env(namespace, granted)) as agent:
        agent.wait_for(lambda: (agent.status()["endpoints"] or {}).get("live"), timeout=BOUND)
        assert agent.get("/prestop", timeout=BOUND)[0] == 200
        assert agent.wait_exit(timeout=BOUND) == 0
        said = [r for r in agent.log_records() if r["message"] == "the API shows the pod's deletion"]
        assert len(said) == 1 and said[0]["pod_deleted"] is True


FAILING_LIVENESS = """
checks:
  app:  # nothing listens on port 1: the liveness answer fails
    type: tcp
    address: 127.0.0.1:1
    probes: [liveness]
    interval: 1s
    failure_threshold: 1
shutdown:
  drain_delay: 1s
  relay_signal: false
  endpoints: {enabled: true, min: 1s, margin: 1s}
"""


def test_a_hook_while_liveness_fails_is_a_restart_unless_the_api_shows_the_deletion(namespace: Namespace,
                                                                                   granted: Path) -> None:
    namespace.unscheduled_pod()
    with run_agent(FAILING_LIVENESS, env=agent_env(namespace, granted)) as agent:
        agent.wait_for(lambda: (agent.status()["endpoints"] or {}).get("live"), timeout=BOUND)
        agent.wait_status("/livez", 503, timeout=BOUND)  # the kubelet was told: the liveness kill's hook follows
        status, body = agent.get("/prestop", timeout=BOUND)
        assert body.startswith("container restart, not a pod stop"), body  # no deletionTimestamp: a restart
        namespace.api.call("DELETE", f"/api/v1/namespaces/{namespace.name}/pods/{POD}")
        status, body = agent.get("/prestop", timeout=BOUND)
        assert (status, body) == (200, "shutdown: not_relayed\n")  # deleted: the sequence runs despite liveness
        assert agent.wait_exit(timeout=BOUND) == 0
        said = [r["message"] for r in agent.log_records() if r["message"].startswith("shutdown started by")]
        assert said == ["shutdown started by GET /prestop: draining until the pod has left its EndpointSlices plus "
                        "1s (at least 1s, at most 1s)"], said
        # Each answer of the API said once, the deletion too though the restart's answer came first.
        read = [r["pod_deleted"] for r in agent.log_records() if r["message"].startswith("the API shows")]
        assert read == [False, True], read
