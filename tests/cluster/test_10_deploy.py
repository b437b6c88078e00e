"""Scenario 1: the README's minimal pod and the manifests of deploy/ run on the real cluster, and the kubelet's own
probes reach the agent (its probe counters grow; the requests say `User-Agent: kube-probe/1.34`)."""

from __future__ import annotations

import re
import time

import pytest

from tests.cluster.harness import ROOT, Cluster, Sniffer, container_status, install_webhook, tool, wait_until

pytestmark = pytest.mark.timeout(300, func_only=True)


def readme_pod() -> str:
    """The YAML block under the README's "A minimal pod"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## A minimal pod"):]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match
    return match.group(1)


def probe_requests(cluster: Cluster, namespace: str, pod: str, container: str) -> dict[str, float]:
    """The agent's sidecar_probe_requests_total by probe (code 200), read from /metrics inside its container."""
    script = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8686/metrics').read().decode())"
    out = cluster.kubectl("exec", "-n", namespace, pod, "-c", container, "--", "python", "-c", script).stdout
    counts: dict[str, float] = {}
    for m in re.finditer(r'^sidecar_probe_requests_total\{code="200",probe="(\w+)"\} (\S+)$', out, re.M):
        counts[m.group(1)] = float(m.group(2))
    return counts


def test_readme_minimal_pod_is_ready_and_probed_by_the_kubelet(cluster: Cluster) -> None:
    ns = cluster.namespace("readme")
    cluster.apply(readme_pod(), "-n", ns)
    pod = cluster.wait_ready(ns, "", 1)[0]
    assert container_status(pod, "app")["ready"] and container_status(pod, "agent")["ready"]
    before = probe_requests(cluster, ns, "web", "agent")
    sniffer = Sniffer(tool.BRIDGE)
    try:
        payloads = sniffer.collect(12)  # the agent's own probes run every 10 s, the app's readiness every 2 s
    finally:
        sniffer.close()
    after = probe_requests(cluster, ns, "web", "agent")
    assert after.get("readiness", 0) > before.get("readiness", 0) and after.get("liveness", 0) >= 1
    ip = pod["status"]["podIP"]
    requests = [p for p in payloads if p.startswith(b"GET /") and b"Host: " + ip.encode() in p]
    agents = {r.split(b"\r\n")[0] for r in requests}
    assert b"GET /readyz HTTP/1.1" in agents, agents
    user_agents = {re.search(rb"User-Agent: (\S+)", r).group(1) for r in requests if b"User-Agent" in r}  # type: ignore[union-attr]
    assert user_agents == {b"kube-probe/1.34"}


def test_deploy_manifests_become_ready(cluster: Cluster) -> None:
    started = time.monotonic()
    kube = ROOT / "deploy" / "kubernetes"
    for variant in ("regular-sidecar", "native-sidecar"):
        ns = cluster.namespace(f"deploy-{variant}")
        cluster.apply((kube / f"{variant}.yaml").read_text() + "\n---\n" + (kube / "service.yaml").read_text(), "-n", ns)
    ns_job = cluster.namespace("deploy-job")
    cluster.apply((kube / "job.yaml").read_text(), "-n", ns_job)
    install_webhook(cluster)
    ns_meta = cluster.get("namespace", "sidecar-agent")["metadata"]["labels"]
    assert ns_meta["pod-security.kubernetes.io/enforce"] == "restricted"
    for variant in ("regular-sidecar", "native-sidecar"):
        pods = cluster.wait_ready(f"deploy-{variant}", "app.kubernetes.io/name=web", 2, timeout=120)
        endpoints = cluster.get("endpointslices", "-n", f"deploy-{variant}", "-l", "kubernetes.io/service-name=web")
        ready = [e for s in endpoints["items"] for e in s.get("endpoints") or [] if e["conditions"].get("ready")]
        assert len(ready) == len(pods) == 2
    cluster.wait_ready("sidecar-agent", "app.kubernetes.io/name=sidecar-agent-webhook", 2, timeout=120)
    job = wait_until("the Job to complete", lambda: cluster.job_outcome(ns_job), 150, 2)
    assert job == "Complete"
    print(f"deploy manifests ready in {time.monotonic() - started:.1f} s")
