"""Scenario 5: liveness on the real kubelet, for the injected pod (each sidecar mode) and the README's pod. The app
hangs: only the app container restarts, and the agent does not run the pod's shutdown (it stays running, is not
restarted, and the pod is Ready again). The agent is killed: the agent restarts, the app does not."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.harness import Cluster, condition, container_status, http_get, timestamp, tool
from tests.cluster.test_10_deploy import readme_pod
from tests.cluster.workloads import inject, pod

pytestmark = pytest.mark.timeout(300, func_only=True)

NS = "liveness"
# (workload, version given to inject, the agent's container name)
CASES = {"native": ("native", None, "sidecar-agent"), "regular-1.28": ("regular", "1.28", "sidecar-agent"),
         "readme": ("web", "readme", "agent")}
# The cases whose app preStop hook calls the agent (1.28's /prestop/wait, the README's /prestop); the native app's
# hook is a sleep, which the agent never sees. The agent's log line for such a call (agent/runtime/daemon.py).
HOOK_CALLS_AGENT = ("regular-1.28", "readme")
RESTART_VERDICT = "a container restart, not a pod stop"


def start(cluster: Cluster, key: str) -> tuple[str, str]:
    """The case's pod, Ready, in a namespace of its own (KIND-CASE); (namespace, pod name)."""
    name, version, _ = CASES[key.split("-", 1)[1]]
    ns = cluster.namespace(f"{NS}-{key.replace('.', '')}")
    manifest = readme_pod() if version == "readme" else inject(pod(name), version)
    cluster.apply(manifest, "-n", ns)
    cluster.wait_ready(ns, "", 1, timeout=120)
    return ns, name


def host_pid(cluster: Cluster, ns: str, name: str, container: str) -> int:
    """The host pid of a container's first process, from the cluster's containerd."""
    cid = container_status(cluster.get("pod", "-n", ns, name), container)["containerID"].split("://")[1]
    out = tool.run(["ctr", "-a", cluster.paths.socket, "-n", "k8s.io", "tasks", "ls"])
    for line in out.splitlines()[1:]:
        task, pid, _ = line.split()
        if task == cid:
            return int(pid)
    raise AssertionError(f"no task for {container} ({cid})")


def hang_app(cluster: Cluster, ns: str, name: str, readme: bool) -> None:
    """Makes the app hang: the test app's /hang blocks every request; the README's http.server is stopped (SIGSTOP),
    which its process check sees."""
    if readme:
        os.kill(host_pid(cluster, ns, name, "app"), signal.SIGSTOP)
        return
    ip = cluster.get("pod", "-n", ns, name)["status"]["podIP"]
    with contextlib.suppress(OSError):
        http_get(ip, 8080, "/hang", timeout=1)


def watch_restart(cluster: Cluster, ns: str, name: str, restarted: str, kept: str, timeout: float) -> dict[str, Any]:
    """Waits until `restarted` has restarted and the pod is Ready again, checking every second that `kept` stays
    running and is never restarted; the pod's final state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = cluster.get("pod", "-n", ns, name)
        other = container_status(current, kept)
        assert other["restartCount"] == 0 and "running" in other["state"], other
        ready = condition(current, "Ready")
        if container_status(current, restarted)["restartCount"] >= 1 and ready:
            return dict(current)
        time.sleep(1)
    raise AssertionError(f"{restarted} did not restart (or the pod is not Ready again) within {timeout} s")


def hung_case(cluster: Cluster, case: str) -> str:
    """The app hangs: it alone restarts, promptly, and the pod is Ready again; a line of figures."""
    ns, name = start(cluster, f"hung-{case}")
    agent = CASES[case][2]
    started = time.monotonic()
    hang_app(cluster, ns, name, case == "readme")
    final = watch_restart(cluster, ns, name, "app", agent, 240)
    app = container_status(final, "app")
    killed = [e for e in cluster.get("events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
              if e["reason"] == "Killing" and "liveness" in e["message"]]
    assert killed, "the kubelet did not kill the app for its liveness probe"
    gap = timestamp(app["state"]["running"]["startedAt"]) - timestamp(killed[0].get("lastTimestamp") or killed[0]["eventTime"])
    figures = (f"app restarted {app['restartCount']}x, Ready again {time.monotonic() - started:.1f} s after the hang; "
               f"kill to new start {gap:.0f} s")
    # The preStop hook must not hold the restart: the app's own stop (the hung gunicorn's graceful timeout, 5 s)
    # plus the injected sleep (5 s) where there is one; the stopped README app needs the whole grace period (30 s)
    # before its SIGKILL, whatever its hook does.
    bound = 30 + 5 if case == "readme" else 5 + 5 + 3
    assert gap <= bound, f"the restart took {gap:.0f} s after the kill (bound {bound} s): the preStop hook held it"
    assert container_status(final, agent)["restartCount"] == 0
    if case in HOOK_CALLS_AGENT:  # the agent's own verdict on that hook call: a restart, answered at once
        logs = cluster.kubectl("logs", "-n", ns, name, "-c", agent).stdout
        assert RESTART_VERDICT in logs, f"the agent did not take the hook for a container restart:\n{logs[-2000:]}"
    return figures


def killed_case(cluster: Cluster, case: str) -> str:
    """The agent is killed: it alone restarts and the pod is Ready again."""
    ns, name = start(cluster, f"killed-{case}")
    agent = CASES[case][2]
    started = time.monotonic()
    os.kill(host_pid(cluster, ns, name, agent), signal.SIGKILL)
    final = watch_restart(cluster, ns, name, agent, "app", 120)
    assert container_status(final, agent)["restartCount"] == 1
    return f"agent restarted, pod Ready again {time.monotonic() - started:.1f} s after the kill"


def _outcome(work: Callable[[], str]) -> str:
    try:
        return "ok: " + work()
    except AssertionError as exc:
        return f"failed: {exc}"


@pytest.fixture(scope="module")
def outcomes(cluster: Cluster) -> dict[str, str]:
    """Every case at once, each in its own namespace (they take 10 to 60 s each, mostly waiting on the kubelet)."""
    work = {f"hung-{c}": functools.partial(hung_case, cluster, c) for c in CASES}
    work |= {f"killed-{c}": functools.partial(killed_case, cluster, c) for c in CASES}
    with concurrent.futures.ThreadPoolExecutor(len(work)) as pool:
        futures = {key: pool.submit(_outcome, fn) for key, fn in work.items()}
        return {key: future.result(timeout=400) for key, future in futures.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hung_app_restarts_alone(outcomes: dict[str, str], case: str) -> None:
    result = outcomes[f"hung-{case}"]
    print(f"{case}: {result}")
    assert result.startswith("ok"), result


@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_agent_restarts_alone(outcomes: dict[str, str], case: str) -> None:
    result = outcomes[f"killed-{case}"]
    print(f"{case}: {result}")
    assert result.startswith("ok"), result
