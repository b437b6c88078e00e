"""`sidecar-agent webhook` as users run it, over real TLS with the real injection: the JSON Patch it answers,
applied with the JSON Patch library, gives exactly the pod `sidecar-agent inject` makes of the same pod, in both
sidecar modes; a bad checks annotation is refused with its key path, and an opted-out pod gets no patch."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.inject import InjectError, Options, inject_template
from agent.kube.versions import Source
from tests.servers import free_port
from tests.webhook.conftest import TlsPair
from tests.webhook.reviews import client_context, patched, review
from tests.webhook.test_process import lines_of, wait_for_line

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "inject" / "corpus"
TEMPLATE_AT = {"Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"), "DaemonSet": ("spec", "template"),
               "ReplicaSet": ("spec", "template"), "Job": ("spec", "template"),
               "CronJob": ("spec", "jobTemplate", "spec", "template")}


def corpus_pods() -> list[tuple[str, dict[str, Any]]]:
    """Every pod template of the inject corpus, as the Pod the API server would admit."""
    pods = []
    for path in sorted(CORPUS.glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            items = doc.get("items", []) if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
            for item in items:
                if not isinstance(item, dict):
                    continue
                kind = item.get("kind")
                if kind == "Pod":
                    template = item
                elif kind in TEMPLATE_AT:
                    template = item
                    for step in TEMPLATE_AT[kind]:
                        template = template.get(step) or {}
                else:
                    continue
                metadata = dict(template.get("metadata") or {})
                metadata.setdefault("name", f"{path.stem}-{index}")
                metadata.setdefault("namespace", "default")
                pods.append((f"{path.stem}/{kind}/{metadata['name']}",
                             {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template.get("spec") or {}}))
    return pods


PODS = corpus_pods()


@pytest.fixture(scope="module", params=["1.28", "1.33"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, certs: Any) -> Iterator[tuple[str, TlsPair, str]]:
    """The real command on a free loopback port, injecting for one Kubernetes version."""
    key, cert = certs.make(f"inject-equals-{request.param}", dns_name="localhost", ip="127.0.0.1")
    tls = TlsPair(key, cert)
    process = subprocess.Popen([sys.executable, "-m", "agent", "webhook", "--tls-cert", str(cert), "--tls-key", str(key),
                                "--listen", f"127.0.0.1:{free_port()}", "--kubernetes-version", request.param],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, reader = lines_of(process)
    try:
        started = json.loads(wait_for_line(lines, "webhook serving on", []))
        yield f"https://{started['listen']}/inject", tls, request.param
    finally:
        process.terminate()
        assert process.wait(30) == 0
        reader.join(10)
        assert process.stdout is not None
        process.stdout.close()


def ask(url: str, tls: TlsPair, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=client_context(tls.cert), timeout=60) as answer:
        assert answer.status == 200
        result: dict[str, Any] = json.loads(answer.read())
        return result


def test_the_corpus_has_pods_of_every_shape() -> None:
    assert len(PODS) >= 12
    assert {name.split("/")[1] for name, _ in PODS} >= {"Deployment", "StatefulSet", "Job", "CronJob"}


@pytest.mark.parametrize(("name", "obj"), PODS, ids=[name for name, _ in PODS])
def test_the_patch_gives_what_inject_gives(served: tuple[str, TlsPair, str], name: str, obj: dict[str, Any]) -> None:
    url, tls, version = served
    major, minor = (int(p) for p in version.split("."))
    template = {"metadata": copy.deepcopy(obj["metadata"]), "spec": copy.deepcopy(obj["spec"])}
    try:
        expected = inject_template(template, Options(kubernetes_version=(major, minor), kubernetes_source=Source.FLAG),
                                   kind="Pod")
    except InjectError as exc:  # a refused pod must be refused by the webhook too, with the same words
        answer = ask(url, tls, review(copy.deepcopy(obj), uid=f"uid-{name}"))["response"]
        assert answer["uid"] == f"uid-{name}" and answer["allowed"] is False
        assert str(exc)[:80] in answer["status"]["message"]
        return
    answer = ask(url, tls, review(copy.deepcopy(obj), uid=f"uid-{name}"))
    assert answer["response"]["uid"] == f"uid-{name}" and answer["response"]["allowed"] is True
    if expected.template == template:  # skipped (opted out, hostNetwork, a port taken...): allowed as it is
        assert "patch" not in answer["response"] and not expected.injected
        return
    result = patched(copy.deepcopy(obj), answer["response"])
    assert {"metadata": result["metadata"], "spec": result["spec"]} == expected.template


def test_a_bad_checks_annotation_is_refused_with_its_key_path(served: tuple[str, TlsPair, str]) -> None:
    url, tls, _ = served
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": "default", "annotations": {
        "sidecar-agent.io/checks": "db: {type: postgres, dsn: 'postgres://u@db/x', timeout: fast}"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    answer = ask(url, tls, review(pod, uid="bad-1"))["response"]
    assert answer["uid"] == "bad-1" and answer["allowed"] is False
    assert "checks.db.timeout" in answer["status"]["message"]


def test_an_opted_out_pod_is_allowed_unchanged(served: tuple[str, TlsPair, str]) -> None:
    url, tls, _ = served
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "out", "namespace": "default",
                                                           "labels": {"sidecar-agent.io/inject": "false"}},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    answer = ask(url, tls, review(pod, uid="out-1"))["response"]
    assert answer == {**answer, "uid": "out-1", "allowed": True} and "patch" not in answer
