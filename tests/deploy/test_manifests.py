"""deploy/kubernetes and deploy/prometheus: valid objects, and settings that agree with the agent they deploy.

Every manifest passes the Kubernetes schemas (kubernetes-validate, strict: no unknown field) or, for the
Prometheus Operator's kinds, their structural schema; each ConfigMap's config passes the agent's own
check-config; the probes name ports and paths the agent serves; the grace period covers the shutdown
budget; security and resources follow the agent's needs.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
from kubernetes_validate import utils as kube

import agent
from agent.lint.rules_probes import AGENT_RESTART_SECONDS  # the agent's restart window, as lint computes it
from agent.units import parse_duration
from tests.deploy.crds import SCHEMAS
from tests.deploy.manifests import (
    AGENT,
    DEPLOY,
    KUBERNETES,
    MARGIN,
    PROMETHEUS,
    ROOT,
    Workload,
    all_documents,
    budget,
    container_port,
    cpu_cores,
    documents,
    listen_port,
    size_bytes,
    workloads,
)

# The oldest release with native sidecars on by default that is still current, and the newest the validator knows.
KUBERNETES_VERSIONS = sorted({"1.33.0", kube.latest_version()})
WORKLOADS = workloads()
IDS = [w.name for w in WORKLOADS]
# Measured resident memory of the agent, in MiB: with no check library loaded, and with each heavy client.
FOOTPRINT_MIB = {"base": 42, "redis": 48, "postgres": 46, "grpc": 59}
AGENT_PATHS = {"livenessProbe": ["/agent/livez"], "readinessProbe": ["/agent/readyz"],
               "startupProbe": ["/agent/readyz", "/agent/livez"]}
# Settings whose reason must be written next to them.
EXPLAINED = {"shareProcessNamespace", "terminationGracePeriodSeconds", "restartPolicy", "preStop", "capabilities",
             "drain_delay", "stop_timeout", "grace_period", "exit_with_app", "match", "listen", "alert", "maxUnavailable",
             "runAsUser"}
APP_PATHS = {"livenessProbe": "/livez", "readinessProbe": "/readyz", "startupProbe": "/startupz"}


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Each workload's agent config as check-config normalises it."""
    tmp = tmp_path_factory.mktemp("configs")
    return {w.name: w.checked_config(tmp) for w in WORKLOADS}


def test_deploy_holds_the_promised_files() -> None:
    kinds = {(path.parent.name, doc["kind"]) for path, doc in all_documents()}
    assert {("kubernetes", "Deployment"), ("kubernetes", "Job"), ("kubernetes", "Service"), ("kubernetes", "ConfigMap"),
            ("prometheus", "PodMonitor"), ("prometheus", "PrometheusRule")} <= kinds
    assert [w.native for w in WORKLOADS if w.doc["kind"] == "Deployment"].count(True) == 1
    assert [w.native for w in WORKLOADS if w.doc["kind"] == "Deployment"].count(False) == 1
    assert list((DEPLOY / "grafana").glob("*.json"))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_passes_the_kubernetes_schemas_in_strict_mode(version: str) -> None:
    checked = []
    for path, doc in all_documents():
        key = (doc.get("apiVersion"), doc.get("kind"))
        where = f"{path.relative_to(ROOT)}: {key[1]}/{doc.get('metadata', {}).get('name')}"
        if key in SCHEMAS:
            jsonschema.validate(doc, SCHEMAS[key])
        else:
            try:
                kube.validate(doc, version, strict=True)
            except kube.ValidationError as exc:
                raise AssertionError(f"{where} against Kubernetes {version}: {exc.message} at {list(exc.path)}") from None
        checked.append(where)
    assert len(checked) >= 10, checked


def test_the_structural_schemas_refuse_what_the_operator_would() -> None:
    monitor = documents(PROMETHEUS / "podmonitor.yaml")[0]
    broken = json.loads(json.dumps(monitor))
    del broken["spec"]["selector"]
    with pytest.raises(jsonschema.ValidationError, match="selector"):
        jsonschema.validate(broken, SCHEMAS[("monitoring.coreos.com/v1", "PodMonitor")])
    rule = documents(PROMETHEUS / "prometheusrule.yaml")[0]
    broken = json.loads(json.dumps(rule))
    broken["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMAS[("monitoring.coreos.com/v1", "PrometheusRule")])


def test_every_file_says_why_its_settings_are_there() -> None:
    """A header comment, and a comment right above (or beside) each setting that shapes the agent's behaviour."""
    unexplained = []
    for path in sorted(KUBERNETES.glob("*.yaml")) + sorted(PROMETHEUS.glob("*.yaml")):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("# "), f"{path.name}: no header saying what the file is"
        for number, line in enumerate(lines):
            key = line.strip().removeprefix("- ").split(":", 1)[0]
            if key not in EXPLAINED or (key == "restartPolicy" and "Always" not in line):
                continue
            if "#" not in line and not lines[number - 1].strip().startswith("#"):
                unexplained.append(f"{path.name}:{number + 1}: {key}")
    assert unexplained == [], "settings without a comment saying why"


@pytest.mark.parametrize("workload", WORKLOADS, ids=IDS)
def test_the_configmap_config_passes_check_config(workload: Workload, configs: dict[str, dict[str, Any]]) -> None:
    config = configs[workload.name]
    assert config["checks"], f"{workload.name}: a config without checks watches nothing"
    assert listen_port(config) == container_port(workload.agent, "agent")
    assert str(config["listen"]).startswith("[::]:"), "the kubelet probes the pod IP, IPv4 or IPv6: every address"


@pytest.mark.parametrize("workload", WORKLOADS, ids=IDS)
def test_the_probes_point_at_ports_and_paths_the_agent_serves(workload: Workload, configs: dict[str, dict[str, Any]]) -> None:
    port = listen_port(configs[workload.name])
    agent_probes = {kind: workload.agent[kind] for kind in AGENT_PATHS if kind in workload.agent}
    assert {"livenessProbe", "readinessProbe"} <= set(agent_probes), "the agent needs its own liveness and readiness"
    for kind, probe in agent_probes.items():
        assert container_port(workload.agent, probe["httpGet"]["port"]) == port
        assert probe["httpGet"]["path"] in AGENT_PATHS[kind], (kind, probe)
    checks = configs[workload.name]["checks"]
    for app in workload.apps:
        probes = {kind: app[kind] for kind in APP_PATHS if kind in app}
        assert "livenessProbe" in probes, f"{app['name']}: the app's liveness should come from the agent"
        for kind, probe in probes.items():
            assert container_port(app, probe["httpGet"]["port"]) == port, f"{app['name']} {kind} misses the agent's port"
            path = probe["httpGet"]["path"]
            assert path == APP_PATHS[kind] or path.startswith(APP_PATHS[kind] + "/"), (kind, path)
            if kind == "livenessProbe":
                survived = (probe.get("failureThreshold", 3) - 1) * probe.get("periodSeconds", 10)
                assert survived > AGENT_RESTART_SECONDS, f"{app['name']}: a crashed agent would get the app restarted"
            feeding = [name for name, check in checks.items() if kind.removesuffix("Probe") in check["probes"]]
            assert feeding or kind == "startupProbe", f"{app['name']} {kind}: no check feeds {path}"
        if workload.doc["kind"] == "Deployment":
            assert set(probes) == set(APP_PATHS), f"{app['name']}: a served app needs all three probes"


@pytest.mark.parametrize("workload", WORKLOADS, ids=IDS)
def test_the_grace_period_covers_the_shutdown_budget(workload: Workload, configs: dict[str, dict[str, Any]]) -> None:
    config = configs[workload.name]
    grace = workload.pod["terminationGracePeriodSeconds"]
    assert parse_duration(config["shutdown"]["grace_period"]) == grace, "shutdown.grace_period must state the pod's grace"
    assert budget(config) + MARGIN <= grace, (
        f"{workload.name}: drain {config['shutdown']['drain_delay']} + stop_timeout {config['shutdown']['stop_timeout']} "
        f"+ {MARGIN:g}s margin > terminationGracePeriodSeconds {grace}")


@pytest.mark.parametrize("workload", [w for w in WORKLOADS if w.doc["kind"] == "Deployment"],
                         ids=[w.name for w in WORKLOADS if w.doc["kind"] == "Deployment"])
def test_drain_delay_covers_the_readiness_probe_and_endpoint_propagation(workload: Workload,
                                                                         configs: dict[str, dict[str, Any]]) -> None:
    drain = parse_duration(configs[workload.name]["shutdown"]["drain_delay"])
    for app in workload.apps:
        probe = app["readinessProbe"]
        noticed = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
        assert drain >= noticed + 5, f"drain_delay {drain:g}s < readiness {noticed}s + 5s for the endpoints to follow"


@pytest.mark.parametrize("workload", [w for w in WORKLOADS if w.doc["kind"] == "Deployment"],
                         ids=[w.name for w in WORKLOADS if w.doc["kind"] == "Deployment"])
def test_the_app_prestop_calls_the_agent_with_the_token_it_reads(workload: Workload,
                                                                 configs: dict[str, dict[str, Any]]) -> None:
    config = configs[workload.name]
    token_env = config["admin"]["token_env"]
    token = workload.env()[token_env]
    assert len(token) >= 16
    for app in workload.apps:
        hook = app["lifecycle"]["preStop"]["httpGet"]
        assert hook["path"] == "/prestop"
        assert container_port(app, hook["port"]) == listen_port(config)
        headers = {h["name"]: h["value"] for h in hook.get("httpHeaders", [])}
        assert headers.get("Authorization") == f"Bearer {token}", "the preStop header must carry the Secret's token"


@pytest.mark.parametrize("workload", WORKLOADS, ids=IDS)
def test_the_agent_can_see_and_signal_the_app(workload: Workload, configs: dict[str, dict[str, Any]]) -> None:
    config = configs[workload.name]
    assert config["app"].get("match"), "the manifests watch the app's process"
    assert workload.pod.get("shareProcessNamespace") is True, "app.match needs the pod's shared PID namespace"
    pod_user = workload.pod.get("securityContext", {}).get("runAsUser")
    agent_context = workload.agent.get("securityContext", {})
    agent_user = agent_context.get("runAsUser", pod_user)
    added = set(agent_context.get("capabilities", {}).get("add", []))
    for app in workload.apps:
        app_user = app.get("securityContext", {}).get("runAsUser", pod_user)
        if agent_user == app_user:
            assert added == set(), "same user as the app: signal relay needs no capability"
        else:
            # A non-root process never gets an added capability (no ambient capabilities): KILL needs uid 0.
            assert added == {"KILL"} and agent_user == 0, f"{app['name']} runs as {app_user}, the agent as {agent_user}"


@pytest.mark.parametrize("workload", WORKLOADS, ids=IDS)
def test_the_agent_container_is_locked_down(workload: Workload) -> None:
    pod_context = workload.pod.get("securityContext", {})
    context = {**pod_context, **workload.agent.get("securityContext", {})}
    assert context.get("runAsNonRoot") is True and context.get("runAsUser", 0) != 0
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"].get("add", [])) <= {"KILL"}
    assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    assert workload.pod.get("automountServiceAccountToken") is False, "the agent never talks to the API server"
    assert not [m for m in workload.agent.get("volumeMounts", []) if not m.get("readOnly")], "the agent writes nothing"


def test_the_agent_runs_as_the_images_user() -> None:
    user = next(line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER "))
    uid = int(user.split(":")[0])
    for workload in WORKLOADS:
        context = {**workload.pod.get("securityContext", {}), **workload.agent.get("securityContext", {})}
        assert context["runAsUser"] == uid, workload.name


@pytest.mark.parametrize("workload", WORKLOADS, ids=IDS)
def test_resources_are_sized_from_the_measured_footprint(workload: Workload, configs: dict[str, dict[str, Any]]) -> None:
    resources = workload.agent["resources"]
    types = {check["type"] for check in configs[workload.name]["checks"].values()}
    footprint = max(FOOTPRINT_MIB.get(t, 0) for t in types | {"base"}) * 2**20
    assert size_bytes(resources["requests"]["memory"]) >= 1.25 * footprint
    assert size_bytes(resources["limits"]["memory"]) >= 2 * footprint
    assert size_bytes(resources["limits"]["memory"]) >= 1.25 * FOOTPRINT_MIB["grpc"] * 2**20, "room for any check type"
    assert size_bytes(resources["limits"]["memory"]) <= 256 * 2**20, "a sidecar should not reserve more than it uses"
    assert 0.005 <= cpu_cores(resources["requests"]["cpu"]) <= 0.1
    # ~0.5 CPU-seconds to start: a throttled restart must still serve within a couple of seconds.
    assert cpu_cores(resources["limits"]["cpu"]) >= 0.25


@pytest.mark.parametrize("workload", WORKLOADS, ids=IDS)
def test_the_images_tag_is_this_version(workload: Workload) -> None:
    image = workload.agent["image"]
    assert image.rsplit(":", 1)[1] == agent.__version__, f"{image}: the manifests should name the version they were tested with"


def test_the_native_sidecar_gates_the_app_on_the_agents_startup(configs: dict[str, dict[str, Any]]) -> None:
    native = next(w for w in WORKLOADS if w.native)
    init = native.pod["initContainers"]
    assert init[-1]["name"] == AGENT and init[-1]["restartPolicy"] == "Always"
    assert init[-1]["startupProbe"]["httpGet"]["path"] == "/agent/readyz"
    regular = next(w for w in WORKLOADS if w.doc["kind"] == "Deployment" and not w.native)
    assert "restartPolicy" not in regular.agent
    # The same app, config and names: switching between the two is one apply.
    assert native.doc["metadata"]["name"] == regular.doc["metadata"]["name"]
    assert native.config_location() == regular.config_location()
    assert configs[native.name] == configs[regular.name]
    strip = {"lifecycle", "startupProbe", "livenessProbe", "readinessProbe", "resources", "securityContext"}
    assert [{k: v for k, v in c.items() if k not in strip} for c in native.apps] == \
           [{k: v for k, v in c.items() if k not in strip} for c in regular.apps]


def test_the_job_completes_with_its_app() -> None:
    job = next(w for w in WORKLOADS if w.doc["kind"] == "Job")
    assert job.pod["restartPolicy"] in ("Never", "OnFailure")
    assert not job.native, "the Job shows exit_with_app, which a regular sidecar needs"
    config_text = job.config_text()
    assert "exit_with_app: true" in config_text


def test_the_service_routes_to_the_deployments_app_port_only() -> None:
    service = next(doc for path, doc in all_documents() if doc["kind"] == "Service" and path.parent == KUBERNETES)
    for workload in (w for w in WORKLOADS if w.doc["kind"] == "Deployment"):
        labels = workload.template["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), workload.name
        app_ports = {p["name"]: p["containerPort"] for app in workload.apps for p in app.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in app_ports or port["targetPort"] in app_ports.values()
            assert container_port(workload.agent, "agent") not in (port["port"], app_ports.get(port["targetPort"]))


def test_the_podmonitor_scrapes_the_agent_of_every_workload() -> None:
    monitor = documents(PROMETHEUS / "podmonitor.yaml")[0]
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert [e["path"] for e in endpoints] == ["/metrics"]
    for workload in WORKLOADS:
        assert selector.items() <= workload.template["metadata"]["labels"].items(), workload.name
        assert endpoints[0]["port"] in [p["name"] for p in workload.agent["ports"]], workload.name
    interval = parse_duration(endpoints[0]["interval"])
    assert parse_duration(endpoints[0]["scrapeTimeout"]) < interval
    # The shutdown alert counts scrapes of the stopping phase: 2 scrapes must fit in every stop_timeout.
    assert interval <= 10


def test_every_file_under_deploy_is_a_manifest_or_a_dashboard() -> None:
    files = sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file())
    # webhook/make-certs.sh: the serving certificate without cert-manager.
    assert all(f.endswith((".yaml", ".json")) or f == "webhook/make-certs.sh" for f in files), files


def test_the_deployment_guide_names_every_file_and_the_manifests_numbers(configs: dict[str, dict[str, Any]]) -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        assert path.name in guide, f"the deployment guide does not mention {path.relative_to(ROOT)}"
    regular = next(w for w in WORKLOADS if w.doc["kind"] == "Deployment" and not w.native)
    shutdown = configs[regular.name]["shutdown"]
    drain, stop = parse_duration(shutdown["drain_delay"]), parse_duration(shutdown["stop_timeout"])
    grace = regular.pod["terminationGracePeriodSeconds"]
    sums = re.findall(r"(\d+) s\s*\+\s*(\d+) s\s*\+\s*(\d+) s\s*=\s*(\d+) s", guide)
    assert sums == [(f"{drain:g}", f"{stop:g}", f"{grace - drain - stop:g}", str(grace))], sums
