"""deploy/webhook: valid objects that agree with each other, with the command they run, and with DESIGN's selection.

Every document passes the Kubernetes schemas strictly (cert-manager's kinds: their structural schema in
crds.py); the Deployment is highly available and runs under the restricted profile; its arguments parse
with the agent's own command line; the registration reaches the Service, selects pods by the namespace
label or the pod label and never kube-system or the webhook's own namespace; make-certs.sh makes a Secret
and a caBundle that the API server would trust for the Service's name.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kube

import agent
from agent.cli import _parser
from agent.webhook.server import MAX_BODY, SHUTDOWN_SECONDS, Certificates, WebhookMetrics, WebhookServer
from tests.deploy.crds import SCHEMAS
from tests.deploy.manifests import ROOT, WEBHOOK, documents
from tests.webhook.mutation import Refused, add_agent

KUBERNETES_VERSIONS = sorted({"1.33.0", kube.latest_version()})
SCRIPT = WEBHOOK / "make-certs.sh"
DOCS = ROOT / "docs" / "webhook.md"
# Settings whose reason must be written right above them or beside them.
EXPLAINED = {"replicas", "maxUnavailable", "minAvailable", "failurePolicy", "timeoutSeconds", "reinvocationPolicy",
             "sideEffects", "automountServiceAccountToken", "runAsUser", "terminationGracePeriodSeconds", "preStop",
             "secretName", "whenUnsatisfiable"}


def objects() -> dict[str, dict[str, Any]]:
    """Every document of deploy/webhook by kind (one of each)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(WEBHOOK.glob("*.yaml")):
        for doc in documents(path):
            assert doc["kind"] not in found, f"two {doc['kind']} in deploy/webhook"
            found[doc["kind"]] = doc
    return found


OBJECTS = objects()
DEPLOYMENT, SERVICE, REGISTRATION = OBJECTS["Deployment"], OBJECTS["Service"], OBJECTS["MutatingWebhookConfiguration"]
POD = DEPLOYMENT["spec"]["template"]["spec"]
CONTAINER = POD["containers"][0]
NAMESPACE = OBJECTS["Namespace"]["metadata"]["name"]


def validate(doc: dict[str, Any], version: str) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in SCHEMAS:
        jsonschema.validate(doc, SCHEMAS[key])
        return
    try:
        kube.validate(doc, version, strict=True)
    except kube.ValidationError as exc:
        raise AssertionError(f"{key[1]}/{doc['metadata'].get('name')} against Kubernetes {version}: {exc.message} "
                             f"at {list(exc.path)}") from None


def test_the_folder_holds_every_promised_object() -> None:
    assert set(OBJECTS) == {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
                            "PodDisruptionBudget", "Service", "MutatingWebhookConfiguration", "Issuer", "Certificate"}
    assert SCRIPT.is_file()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_passes_the_schemas_in_strict_mode(version: str) -> None:
    for doc in OBJECTS.values():
        validate(doc, version)


def test_the_cert_manager_schemas_refuse_what_cert_manager_would() -> None:
    certificate = OBJECTS["Certificate"]
    for change in ({"issuerRef": None}, {"duration": "90 days"}, {"usages": ["server"]}, {"dnsNames": ["Not_A_Name"]}):
        broken = copy.deepcopy(certificate)
        broken["spec"].update(change)
        if change == {"issuerRef": None}:
            del broken["spec"]["issuerRef"]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMAS[("cert-manager.io/v1", "Certificate")])


def test_every_setting_says_why_it_is_there() -> None:
    unexplained = []
    for path in sorted(WEBHOOK.glob("*.yaml")):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("# "), f"{path.name}: no header saying what the file is"
        for number, line in enumerate(lines):
            key = line.strip().removeprefix("- ").split(":", 1)[0]
            if key in EXPLAINED and "#" not in line and not lines[number - 1].strip().startswith("#"):
                unexplained.append(f"{path.name}:{number + 1}: {key}")
    assert unexplained == []


def test_two_replicas_that_a_drain_or_a_rollout_never_takes_both_of() -> None:
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["replicas"] == 2
    assert DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = OBJECTS["PodDisruptionBudget"]
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert SERVICE["spec"]["selector"].items() <= labels.items()
    assert POD["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_the_pod_runs_under_the_restricted_profile() -> None:
    assert OBJECTS["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    context = {**POD["securityContext"], **CONTAINER["securityContext"]}
    assert context["runAsNonRoot"] is True
    user = next(line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER "))
    assert context["runAsUser"] == int(user.split(":")[0])
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert OBJECTS["ServiceAccount"]["automountServiceAccountToken"] is False, "only the webhook's pod gets a token"
    assert all(mount["readOnly"] for mount in CONTAINER["volumeMounts"])


def test_the_webhook_reads_the_oldest_kubelet_with_a_token_that_may_only_list_nodes() -> None:
    args = _parser().parse_args([*CONTAINER.get("command", [])[1:], *CONTAINER["args"]])
    assert args.kubernetes_version == "auto"
    assert POD["automountServiceAccountToken"] is True, "auto lists the nodes with the pod's service account"
    account = OBJECTS["ServiceAccount"]["metadata"]
    assert POD["serviceAccountName"] == account["name"]
    binding, role = OBJECTS["ClusterRoleBinding"], OBJECTS["ClusterRole"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]


def container_port(name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    return next(int(p["containerPort"]) for p in CONTAINER["ports"] if p["name"] == name_or_number)


def test_the_container_runs_a_webhook_command_the_cli_accepts() -> None:
    assert CONTAINER["image"] == agent.IMAGE
    args = _parser().parse_args([*CONTAINER.get("command", [])[1:], *CONTAINER["args"]])
    assert args.command == "webhook"
    assert args.image == agent.IMAGE, "injected pods run the webhook's own version"
    port = int(args.listen.rsplit(":", 1)[1])
    # The certificate files come from the Secret the Certificate writes (and make-certs.sh's secret.yaml).
    mount = next(m for m in CONTAINER["volumeMounts"] if Path(args.tls_cert).parent == Path(m["mountPath"]))
    assert Path(args.tls_key).parent == Path(mount["mountPath"])
    volume = next(v for v in POD["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == OBJECTS["Certificate"]["spec"]["secretName"]
    assert {Path(args.tls_cert).name, Path(args.tls_key).name} == {"tls.crt", "tls.key"}
    probe = CONTAINER["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["scheme"], container_port(probe["port"])) == ("/healthz", "HTTPS", port)
    assert "livenessProbe" not in CONTAINER, "a liveness probe timing out under load would restart both replicas"
    assert container_port(SERVICE["spec"]["ports"][0]["targetPort"]) == port
    sleep = CONTAINER["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep + SHUTDOWN_SECONDS < POD["terminationGracePeriodSeconds"]


def test_the_registration_reaches_the_service_for_pod_creation_only() -> None:
    service_port = SERVICE["spec"]["ports"][0]["port"]
    assert len(REGISTRATION["webhooks"]) == 2
    for hook in REGISTRATION["webhooks"]:
        assert hook["clientConfig"]["service"] == {"name": SERVICE["metadata"]["name"], "namespace": NAMESPACE,
                                                   "path": "/inject", "port": service_port}
        assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                  "resources": ["pods"], "scope": "Namespaced"}]
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "None"
        assert hook["failurePolicy"] in ("Ignore", "Fail")
        assert 1 <= hook["timeoutSeconds"] <= 10
        assert hook["reinvocationPolicy"] in ("Never", "IfNeeded")


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector's verdict (an empty selector selects everything)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        verdict = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
                   "Exists": key in labels, "DoesNotExist": key not in labels}[operator]
        if not verdict:
            return False
    return True


def entries_for(namespace: str, namespace_labels: dict[str, str], pod_labels: dict[str, str]) -> list[str]:
    labels = {"kubernetes.io/metadata.name": namespace, **namespace_labels}
    return [hook["name"] for hook in REGISTRATION["webhooks"]
            if selects(hook.get("namespaceSelector", {}), labels) and selects(hook.get("objectSelector", {}), pod_labels)]


ENABLED, ON, OFF = {"sidecar-agent.io/inject": "enabled"}, {"sidecar-agent.io/inject": "true"}, {"sidecar-agent.io/inject": "false"}


@pytest.mark.parametrize(("namespace", "namespace_labels", "pod_labels", "reviewed"), [
    ("shop", ENABLED, {"app": "web"}, True),
    ("shop", ENABLED, {**OFF, "app": "web"}, False),
    ("shop", ENABLED, ON, True),
    ("shop", {}, {"app": "web"}, False),
    ("shop", {}, ON, True),
    ("shop", {}, OFF, False),
    ("kube-system", ENABLED, {}, False),
    ("kube-system", {}, ON, False),
    (NAMESPACE, ENABLED, ON, False),
], ids=["enabled-namespace", "enabled-namespace-pod-opts-out", "enabled-namespace-pod-opts-in", "plain-namespace",
        "plain-namespace-pod-opts-in", "plain-namespace-pod-opts-out", "kube-system", "kube-system-pod-opts-in",
        "own-namespace"])
def test_pods_are_selected_by_namespace_or_pod_label_and_reviewed_once(
        namespace: str, namespace_labels: dict[str, str], pod_labels: dict[str, str], reviewed: bool) -> None:
    assert len(entries_for(namespace, namespace_labels, pod_labels)) == (1 if reviewed else 0)


def test_cert_manager_issues_for_the_services_name_and_injects_the_ca() -> None:
    certificate = OBJECTS["Certificate"]
    assert f"{SERVICE['metadata']['name']}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    assert certificate["metadata"]["namespace"] == NAMESPACE
    assert certificate["spec"]["issuerRef"]["name"] == OBJECTS["Issuer"]["metadata"]["name"]
    assert REGISTRATION["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        f"{NAMESPACE}/{certificate['metadata']['name']}"


def make_certs(out: Path, *args: str) -> None:
    done = subprocess.run(["sh", str(SCRIPT), str(out), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


async def served_to_the_api_server(out: Path, bundle: bytes) -> list[str]:
    """Serve the script's pair, connect as the API server does: trusting caBundle, checking the Service's name.

    The DNS names of the certificate the client verified; a pair the API server would refuse raises instead."""
    server = WebhookServer(Certificates(str(out / "tls.crt"), str(out / "tls.key")), add_agent, (Refused,),
                           WebhookMetrics())
    await server.start("127.0.0.1", 0)
    try:
        client = ssl.create_default_context(cadata=bundle.decode())
        _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client,
                                                  server_hostname=f"{SERVICE['metadata']['name']}.{NAMESPACE}.svc")
        names = [value for kind, value in writer.get_extra_info("peercert")["subjectAltName"] if kind == "DNS"]
        writer.close()
        await writer.wait_closed()
        return names
    finally:
        await server.close()


async def test_make_certs_writes_a_secret_and_a_ca_bundle_the_api_server_would_trust(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    make_certs(out, "30")
    secret = yaml.safe_load((out / "secret.yaml").read_text())
    for version in KUBERNETES_VERSIONS:
        validate(secret, version)
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == (
        OBJECTS["Certificate"]["spec"]["secretName"], NAMESPACE)
    assert base64.b64decode(secret["data"]["tls.crt"]) == (out / "tls.crt").read_bytes()
    assert (out / "tls.key").stat().st_mode & 0o077 == 0, "keys readable by their owner only"
    patch = json.loads((out / "cabundle-patch.json").read_text())
    registration = jsonpatch.apply_patch(copy.deepcopy(REGISTRATION), patch)
    for version in KUBERNETES_VERSIONS:
        validate(registration, version)
    bundles = {hook["clientConfig"]["caBundle"] for hook in registration["webhooks"]}
    assert len(bundles) == 1
    bundle = base64.b64decode(bundles.pop())
    assert f"{SERVICE['metadata']['name']}.{NAMESPACE}.svc" in await served_to_the_api_server(out, bundle)
    # A second run renews the serving pair under the same CA: the caBundle already registered stays valid.
    first = (out / "tls.crt").read_bytes()
    make_certs(out)
    assert (out / "tls.crt").read_bytes() != first
    assert json.loads((out / "cabundle-patch.json").read_text()) == patch
    assert f"{SERVICE['metadata']['name']}.{NAMESPACE}.svc" in await served_to_the_api_server(out, bundle)


def test_make_certs_refuses_a_bad_lifetime(tmp_path: Path) -> None:
    done = subprocess.run(["sh", str(SCRIPT), str(tmp_path / "certs"), "a year"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "DAYS" in done.stderr


def test_the_docs_page_names_every_file_and_the_registrations_choices() -> None:
    page = DOCS.read_text()
    for path in sorted(WEBHOOK.iterdir()):
        assert path.name in page, f"docs/webhook.md does not mention deploy/webhook/{path.name}"
    hook = REGISTRATION["webhooks"][0]
    for setting in (f"failurePolicy: {hook['failurePolicy']}", f"timeoutSeconds: {hook['timeoutSeconds']}",
                    f"reinvocationPolicy: {hook['reinvocationPolicy']}", "dryRun", "sidecar-agent.io/inject",
                    f"The body limit is {MAX_BODY // 2**20} MiB", f"`{agent.IMAGE}`"):
        assert setting in page, setting
