"""End to end: a two-container Deployment injected, the agent run exactly as its container says, the kubelet's probes
of the paths the injected spec names, one app broken, and the pod deleted the way the kubelet does for each mechanism.

Scaled for a test: the kubelet's probe periods are a quarter of the injected ones (thresholds as written); the pod's
port 8686 is a free port of this machine, given to the agent and its hook by SIDECAR_AGENT_LISTEN (the one override).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.inject import Options, inject_template
from agent.kube import kubelet_env
from agent.testing import run_agent
from tests.e2e.pod import NETWORK_ERRORS, Clients, Endpoint, ProbeWorker, Service, http_get, start_web_app, wait_until

SCALE = 0.25
LAG = 0.5  # endpoints controller + kube-proxy

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers:
        - name: web
          image: example.com/web:1
          ports: [{name: http, containerPort: WEB}]
          livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 1}
          readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 1}
        - name: api
          image: example.com/api:1
          ports: [{name: http, containerPort: API}]
          livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 1}
          readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 1}
"""


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's literal env values, after the kubelet's $(VAR) expansion."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        env[entry["name"]] = kubelet_env.expand(entry["value"], env.get)
    return env


def worker(name: str, port: int, probe: dict[str, Any], *, initial: bool, on_change: Any = None) -> ProbeWorker:
    assert probe["httpGet"]["port"] == 8686, "every kubelet probe of an app container asks the agent"
    return ProbeWorker(name, port, probe["httpGet"]["path"], period=probe["periodSeconds"] * SCALE,
                       timeout=probe.get("timeoutSeconds", 1), success_threshold=1,
                       failure_threshold=probe["failureThreshold"], initial=initial,
                       on_change=on_change or (lambda passing: None))


class PodReadiness:
    """The pod is ready when every container is; the Service hears of each change of the whole."""

    def __init__(self, service: Service, endpoint: Endpoint, names: list[str]) -> None:
        self.service, self.endpoint = service, endpoint
        self.ready = dict.fromkeys(names, False)
        self.lock = threading.Lock()

    def changed(self, name: str) -> Any:
        def apply(ready: bool) -> None:
            with self.lock:
                before = all(self.ready.values())
                self.ready[name] = ready
                if all(self.ready.values()) != before:
                    self.service.update(self.endpoint, not before)
        return apply


@pytest.mark.parametrize("version", [(1, 28), (1, 33)], ids=["regular-1.28", "native-1.33"])
def test_injected_pod_probes_each_container_and_stops_without_losing_a_request(version: tuple[int, int],
                                                                                 tmp_path: Path) -> None:
    native = version >= (1, 29)
    sick = tmp_path / "web.sick"
    with ExitStack() as stack:
        web = stack.enter_context(start_web_app(tmp_path, sick_file=sick))
        api = stack.enter_context(start_web_app(tmp_path))
        doc = yaml.safe_load(DEPLOYMENT.replace("WEB", str(web.port)).replace("API", str(api.port)))
        outcome = inject_template(doc["spec"]["template"], Options(kubernetes_version=version), kind="Deployment")
        assert outcome.injected, outcome.notes
        spec = outcome.template["spec"]
        agent_spec = (spec["initContainers"] if native else spec["containers"])[-1]
        apps = {c["name"]: c for c in spec["containers"] if c["name"] != "sidecar-agent"}
        assert agent_spec["command"] == ["sidecar-agent"] and agent_spec["args"] == ["run"]
        env = container_env(agent_spec)
        agent = stack.enter_context(run_agent(None, args=tuple(agent_spec["args"]), env=env))
        env["SIDECAR_AGENT_LISTEN"] = f"127.0.0.1:{agent.port}"

        service = stack.enter_context(Service(LAG))
        endpoint = Endpoint("shop-0", web.port)
        pod_ready = PodReadiness(service, endpoint, list(apps))
        readiness = {n: worker(f"{n}-readiness", agent.port, c["readinessProbe"], initial=False,
                               on_change=pod_ready.changed(n)) for n, c in apps.items()}
        liveness = {n: worker(f"{n}-liveness", agent.port, c["livenessProbe"], initial=True) for n, c in apps.items()}
        assert {w.path for w in liveness.values()} == {"/livez/web-liveness", "/livez/api-liveness"}
        clients = Clients(service, 3, pause=0.005, timeout=2.0)
        for probe_worker in [*readiness.values(), *liveness.values()]:
            stack.callback(probe_worker.stop)
            probe_worker.start()
        stack.callback(clients.stop)
        clients.start()
        wait_until(lambda: service.routes_to(endpoint) and clients.tally.succeeded >= 20, 30, "the pod to serve")

        # One app's health breaks: its own liveness fails, the other's never does, and the pod leaves the Service.
        sick.touch()
        wait_until(lambda: not liveness["web"].passing, 30, "web's liveness to fail")
        wait_until(lambda: not service.routes_to(endpoint), 30, "the pod to leave the Service")
        assert all(r.ok for r in liveness["api"].history) and liveness["api"].passing
        sick.unlink()
        wait_until(lambda: service.routes_to(endpoint), 30, "the pod to be ready again")
        for name in apps:
            liveness[name].stop()
        liveness_failures = {n: sum(not r.ok for r in w.history) for n, w in liveness.items()}
        assert liveness_failures["web"] >= liveness["web"].failure_threshold and liveness_failures["api"] == 0
        ready_again = clients.tally.succeeded
        wait_until(lambda: clients.tally.succeeded >= ready_again + 20, 30, "traffic to flow again")

        # The deletion, t=0: every container's preStop hook at once, then its SIGTERM; a native sidecar's SIGTERM
        # only after the app containers have exited (kuberuntime_container.go: killContainer, waitForTurn).
        deleted = time.monotonic()
        processes = {"web": web.proc, "api": api.proc}
        hook_results: dict[str, str] = {}

        def run_hook(name: str, container: dict[str, Any]) -> None:
            hook = container.get("lifecycle", {}).get("preStop")
            if hook is None:
                hook_results[name] = "none"
            elif "sleep" in hook:
                time.sleep(hook["sleep"]["seconds"])
                hook_results[name] = "slept"
            elif "httpGet" in hook:
                if hook["httpGet"]["port"] != 8686:  # said in the result: an assert in this thread would be swallowed
                    hook_results[name] = f"httpGet to port {hook['httpGet']['port']}, not the agent's"
                    return
                try:
                    status, body = http_get(agent.port, hook["httpGet"]["path"], timeout=spec.get(
                        "terminationGracePeriodSeconds", 30))
                    # The answer may add how long after the hook the agent's stop began: not part of the verdict.
                    hook_results[name] = f"HTTP {status} {body.split(' (the stop began')[0].strip()}"
                except NETWORK_ERRORS as exc:
                    hook_results[name] = f"{type(exc).__name__}"
            else:
                if hook["exec"]["command"][0] != "sidecar-agent":
                    hook_results[name] = f"exec of {hook['exec']['command'][0]}, not the agent's binary"
                    return
                command = [sys.executable, "-m", "agent", *hook["exec"]["command"][1:]]
                done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
                hook_results[name] = f"exit {done.returncode} {done.stdout.strip()}"

        def stop_app(name: str) -> None:
            run_hook(name, apps[name])
            processes[name].send_signal(signal.SIGTERM)

        threads = [threading.Thread(target=stop_app, args=(n,)) for n in apps]
        agent_hook = threading.Thread(target=run_hook, args=("sidecar-agent", agent_spec))
        for thread in [*threads, agent_hook]:
            thread.start()
        if not native:
            agent_hook.join(30)
            agent.signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        codes = {n: p.wait(60) for n, p in processes.items()}
        agent_hook.join(30)
        if native and agent.proc.poll() is None:  # the agent may have ended its own sequence already
            agent.signal(signal.SIGTERM)
        agent_code = agent.wait_exit(30)
        wait_until(lambda: not service.routes_to(endpoint), 15, "the Service to drop the pod")
        time.sleep(0.5)
        clients.stop()

        dropped = next(at for at, e, ready in service.changes if e == endpoint and not ready and at >= deleted)
        sigterm = web.when("SIGTERM")
        assert sigterm is not None and sigterm > dropped, "the app is signalled only after the Service dropped the pod"
        assert clients.tally.failed == 0, clients.tally.failures[:5]
        assert codes == {"web": 0, "api": 0} and agent_code == 0, agent.logs()[-20:]
        expected = "slept" if version >= (1, 30) else "HTTP 200 shutdown: not_relayed"
        assert hook_results["web"] == hook_results["api"] == expected, hook_results
        if native:
            assert hook_results["sidecar-agent"].startswith("exit 0"), hook_results
