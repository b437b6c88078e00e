"""One pod template: what injection adds, what it refuses, and that --remove and a second injection change nothing."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from agent import IMAGE
from agent.config import EndpointsMode, load
from agent.inject import InjectError, Options, inject_template, remove_template
from agent.inject.api import Drain
from agent.kube import kubelet_env

TEMPLATE = """
metadata: {labels: {app: shop}}
spec:
  containers:
    - name: web
      image: example.com/web:1
      ports: [{name: http, containerPort: 8080}]
      livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 5}
      readinessProbe: {httpGet: {path: /ready, port: http}}
      startupProbe: {httpGet: {path: /healthz, port: http}, failureThreshold: 30, periodSeconds: 2}
    - name: worker
      image: example.com/worker:1
      livenessProbe: {tcpSocket: {port: 9000}}
"""


def template(checks: str | None = None) -> dict[str, Any]:
    t = yaml.safe_load(TEMPLATE)
    if checks is not None:
        t["metadata"]["annotations"] = {"sidecar-agent.io/checks": checks}
    return t  # type: ignore[no-any-return]


def config_of(spec: dict[str, Any]) -> str:
    agent = next(c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == "sidecar-agent")
    return kubelet_env.expand(next(e["value"] for e in agent["env"] if e["name"] == "SIDECAR_AGENT_CONFIG_YAML"))


def test_each_container_s_liveness_asks_its_own_check() -> None:
    out = inject_template(template(), Options()).template["spec"]
    web, worker = out["containers"]
    assert web["livenessProbe"]["httpGet"]["path"] == "/livez/web-liveness"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/livez/worker-liveness"
    assert web["readinessProbe"]["httpGet"]["path"] == worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["startupProbe"]["httpGet"]["path"] == "/startupz/web-startup"
    # the startup allowance is the original's (30 x 2 s) plus the agent's margin, asked every 2 s
    assert web["startupProbe"]["failureThreshold"] * web["startupProbe"]["periodSeconds"] >= 60
    config = load(config_of(out), {})
    assert {c.name: c.probes for c in config.checks} == {
        "web-liveness": ("liveness",), "web-readiness": ("readiness",), "web-startup": ("startup",),
        "worker-liveness": ("liveness",)}
    assert next(c for c in config.checks if c.name == "web-liveness").interval == 5


def test_native_sidecar_from_1_29_and_a_regular_container_below() -> None:
    native = inject_template(template(), Options(kubernetes_version=(1, 29))).template["spec"]
    assert [c["name"] for c in native["initContainers"]] == ["sidecar-agent"]
    assert native["initContainers"][0]["restartPolicy"] == "Always"
    assert native["initContainers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sidecar-agent", "stop"]
    # The app's hook names its own liveness and startup checks: a restart of it is answered at once.
    assert native["containers"][0]["lifecycle"]["preStop"] == {
        "httpGet": {"path": "/prestop/wait?check=web-liveness&check=web-startup", "port": 8686}}
    assert inject_template(template(), Options(kubernetes_version=(1, 30))).template["spec"]["containers"][0][
        "lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    regular = inject_template(template(), Options(kubernetes_version=(1, 28))).template["spec"]
    agent = regular["containers"][-1]
    assert agent["name"] == "sidecar-agent" and "lifecycle" not in agent and "initContainers" not in regular
    assert agent["image"] == IMAGE


def test_the_agent_container_fits_the_restricted_profile_and_holds_no_secret() -> None:
    out = inject_template(template(), Options()).template
    agent = out["spec"]["initContainers"][0]
    security = agent["securityContext"]
    assert security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]} and security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "token" not in json.dumps(out).lower()


def test_grace_period_is_raised_when_short_and_never_lowered() -> None:
    short, long = template(), template()
    short["spec"]["terminationGracePeriodSeconds"] = 3
    long["spec"]["terminationGracePeriodSeconds"] = 120
    raised = inject_template(short, Options())
    assert raised.template["spec"]["terminationGracePeriodSeconds"] == 10
    assert any("raised from 3 to 10" in n for n in raised.notes)
    assert inject_template(long, Options()).template["spec"]["terminationGracePeriodSeconds"] == 120
    assert "grace_period: 120s" in config_of(inject_template(long, Options()).template["spec"])


def test_the_config_survives_the_kubelets_expansion() -> None:
    t = template("home:\n  type: file\n  path: /tmp/$(HOME)$$x\n  probes: []\n")
    text = config_of(inject_template(t, Options()).template["spec"])
    assert "path: /tmp/$(HOME)$$x" in text


def test_annotation_checks_copy_their_env_and_refuse_literal_secrets() -> None:
    t = template("db:\n  type: redis\n  url: ${REDIS_URL}\n")
    t["spec"]["containers"][1]["env"] = [{"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "r", "key": "url"}}}]
    agent = inject_template(t, Options()).template["spec"]["initContainers"][0]
    assert agent["env"][0] == {"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "r", "key": "url"}}}
    literal = template("db:\n  type: redis\n  url: redis://:hunter2@127.0.0.1:6379\n")
    with pytest.raises(InjectError, match=r'metadata.annotations\["sidecar-agent.io/checks"\].checks.db: a secret'):
        inject_template(literal, Options())
    missing = template("db:\n  type: redis\n  url: ${NOWHERE}\n")
    with pytest.raises(InjectError, match="NOWHERE"):
        inject_template(missing, Options())


def test_a_header_with_a_scheme_and_a_variable_is_no_literal_secret() -> None:
    """`Bearer ${TOKEN}`: only the scheme is written, the credential comes from the env (found by test_properties.py)."""
    header = "up:\n  type: http\n  url: http://127.0.0.1:9999/ping\n  headers: {{Authorization: '{}'}}\n"
    t = template(header.format("Bearer ${API_TOKEN}"))
    t["spec"]["containers"][1]["env"] = [{"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "a", "key": "t"}}}]
    agent = inject_template(t, Options()).template["spec"]["initContainers"][0]
    assert agent["env"][0]["name"] == "API_TOKEN"
    for literal in ("Bearer hunter22", "Bearer ${API_TOKEN} hunter22", "Basic abc"):
        t["metadata"]["annotations"]["sidecar-agent.io/checks"] = header.format(literal)
        with pytest.raises(InjectError, match="a secret is written in plain text"):
            inject_template(t, Options())


def test_a_bad_annotation_names_the_key_path() -> None:
    t = template("db:\n  type: tcp\n  address: 127.0.0.1:5432\n  timeout: soon\n")
    with pytest.raises(InjectError, match=r'metadata.annotations\["sidecar-agent.io/checks"\].checks.db.timeout: ') as info:
        inject_template(t, Options())
    assert info.value.path == ("metadata", "annotations", "sidecar-agent.io/checks")


@pytest.mark.parametrize(("change", "reason"), [
    (lambda t: t["metadata"]["labels"].update({"sidecar-agent.io/inject": "false"}), "opted out"),
    (lambda t: t["spec"].update({"hostNetwork": True}), "hostNetwork"),
    (lambda t: t["spec"]["containers"][1].update({"ports": [{"containerPort": 8686}]}), "port 8686"),
    (lambda t: t["spec"]["containers"][0].update({"lifecycle": {"preStop": {"exec": {"command": ["nginx", "-s", "quit"]}}}}),
     "without a shell"),
    (lambda t: t["spec"]["containers"][0].update({"lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": 80}}}}),
     "httpGet"),
])
def test_skipped_templates_come_back_unchanged_with_the_reason(change: Any, reason: str) -> None:
    t = template()
    change(t)
    outcome = inject_template(t, Options())
    assert not outcome.injected and outcome.template == t and reason in outcome.notes[0]


def test_jobs_complete_as_native_sidecars_and_by_watching_the_app_below() -> None:
    job = yaml.safe_load("spec: {restartPolicy: Never, containers: [{name: run, image: x}]}")
    out = inject_template(job, Options(), kind="Job")
    agent = out.template["spec"]["initContainers"][0]
    assert agent["restartPolicy"] == "Always" and "lifecycle" not in agent
    assert "drain_delay: 0s" in config_of(out.template["spec"])
    assert "readinessProbe" not in out.template["spec"]["containers"][0]
    regular = inject_template(job, Options(kubernetes_version=(1, 28)), kind="CronJob").template["spec"]
    assert regular["shareProcessNamespace"] is True and regular["containers"][-1]["name"] == "sidecar-agent"
    config = load(config_of(regular), {})
    assert config.app.match is not None and config.app.match.other_containers and config.app.exit_with_app


@pytest.mark.parametrize("version", [(1, 28), (1, 33)])
def test_remove_restores_and_a_second_injection_changes_nothing(version: tuple[int, int]) -> None:
    t = template("extra:\n  type: tcp\n  address: 127.0.0.1:1\n  probes: []\n")
    t["spec"]["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": ["sh", "-c", "kill 1"]}}}
    original = copy.deepcopy(t)
    once = inject_template(t, Options(kubernetes_version=version))
    assert t == original, "the input is not changed"
    assert inject_template(once.template, Options(kubernetes_version=version)).template == once.template
    back = remove_template(once.template)
    assert back.template == original
    assert list(back.template["metadata"]) == list(original["metadata"])
    assert list(back.template["spec"]["containers"][0]) == list(original["spec"]["containers"][0])
    assert not remove_template(original).injected


@pytest.mark.parametrize(("hook", "after"), [
    ({"sleep": {"seconds": 2}}, {"sleep": {"seconds": 5}}),
    ({"sleep": {"seconds": 10}}, {"sleep": {"seconds": 10}}),
    ({"exec": {"command": ["sh", "-c", "nginx -s quit"]}}, {"exec": {"command": ["sh", "-c", "sleep 5; nginx -s quit"]}}),
    ({"exec": {"command": ["/bin/sleep", "20"]}}, {"exec": {"command": ["/bin/sleep", "20"]}}),
])
def test_a_users_pre_stop_hook_is_kept_after_the_drain(hook: dict[str, Any], after: dict[str, Any]) -> None:
    t = template()
    t["spec"]["containers"][0]["lifecycle"] = {"preStop": hook, "postStart": {"exec": {"command": ["true"]}}}
    out = inject_template(t, Options())
    assert out.injected
    assert out.template["spec"]["containers"][0]["lifecycle"] == {"preStop": after, "postStart": {"exec": {"command": ["true"]}}}
    assert remove_template(out.template).template == t


def test_remove_refuses_a_record_that_no_longer_fits() -> None:
    out = inject_template(template(), Options()).template
    del out["spec"]["initContainers"]
    with pytest.raises(InjectError, match="does not fit"):
        remove_template(out)


def test_an_annotation_check_under_liveness_is_said_to_restart_nothing() -> None:
    out = inject_template(template("own:\n  type: tcp\n  address: 127.0.0.1:9000\n  probes: [liveness]\n"), Options())
    assert any("check own" in n and "restarts nothing" in n for n in out.notes)


def test_drain_endpoints_adds_the_pods_identity_and_a_hook_that_waits_on_the_agent() -> None:
    out = inject_template(template(), Options(kubernetes_version=(1, 33), drain=Drain.ENDPOINTS)).template["spec"]
    agent = out["initContainers"][0]
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in agent["env"] if "valueFrom" in e} == {
        "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "POD_IPS": "status.podIPs"}
    # Each hook names its container's own checks, so a liveness kill is answered at once.
    assert [c["lifecycle"]["preStop"]["httpGet"]["path"] for c in out["containers"]] == [
        "/prestop/wait?check=web-liveness&check=web-startup", "/prestop/wait?check=worker-liveness"]
    shutdown = load(config_of(out), {}).shutdown
    assert shutdown.endpoints is not None and shutdown.endpoints.enabled is EndpointsMode.AUTO
    # The timer's injection sleeps instead, and its agent has no pod identity.
    timed = inject_template(template(), Options(kubernetes_version=(1, 33))).template["spec"]
    assert timed["containers"][0]["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert load(config_of(timed), {}).shutdown.endpoints is None


def test_the_drain_annotation_overrides_the_option_and_a_bad_one_is_refused() -> None:
    t = template()
    t["metadata"]["annotations"] = {"sidecar-agent.io/drain": "timer"}
    out = inject_template(t, Options(kubernetes_version=(1, 33), drain=Drain.ENDPOINTS)).template["spec"]
    assert load(config_of(out), {}).shutdown.endpoints is None
    t["metadata"]["annotations"] = {"sidecar-agent.io/drain": "endpoint"}
    with pytest.raises(InjectError, match=r'metadata.annotations\["sidecar-agent.io/drain"\]: expected one of '
                                          r"timer, endpoints, got 'endpoint'") as caught:
        inject_template(t, Options())
    assert caught.value.path == ("metadata", "annotations", "sidecar-agent.io/drain")


def test_drain_endpoints_without_a_token_says_the_drain_stays_the_timer() -> None:
    t = template()
    t["spec"]["automountServiceAccountToken"] = False
    notes = inject_template(t, Options(drain=Drain.ENDPOINTS)).notes
    assert any(n.startswith("automountServiceAccountToken is false") for n in notes), notes
