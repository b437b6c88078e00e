"""The test app's manifests, plain or injected with `sidecar-agent inject`."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.cluster.harness import ROOT

APP = "cluster-test-app:1"


def deployment(name: str, replicas: int = 3, grace: int = 30, service_account: str | None = None) -> str:
    """A Deployment of the gunicorn test app with its own probes, and its ClusterIP Service on port 80.
    `service_account`: the pods run as it, with its token mounted (else no token at all)."""
    labels = {"app": name}
    container = {
        "name": "app", "image": APP, "imagePullPolicy": "Never",
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
        "livenessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 2, "timeoutSeconds": 1,
                          "failureThreshold": 3},
        "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "allowPrivilegeEscalation": False},
    }
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "terminationGracePeriodSeconds": grace, "automountServiceAccountToken": False,
                     "containers": [container]}}},
    }
    if service_account is not None:
        pod_spec = deploy["spec"]["template"]["spec"]  # type: ignore[index]
        pod_spec.update({"serviceAccountName": service_account, "automountServiceAccountToken": True})
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}}
    return yaml.safe_dump_all([deploy, service], sort_keys=False)


def inject(manifest: str, version: str | None = None, *extra: str) -> str:
    """`sidecar-agent inject` of a manifest (the default Kubernetes version, or `version`; `extra` options, such as
    `--drain endpoints`); the agent pulled never."""
    args = [sys.executable, "-m", "agent", "inject", "-", *extra] + (["--kubernetes-version", version] if version else [])
    out = subprocess.run(args, input=manifest, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    docs = list(yaml.safe_load_all(out))
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec") if doc else None
        for container in (spec or {}).get("initContainers", []) + (spec or {}).get("containers", []):
            container["imagePullPolicy"] = "Never"  # the image is only in the local store
    return yaml.safe_dump_all(docs, sort_keys=False)


def pod(name: str, grace: int = 30, service_account: str | None = None) -> str:
    """A bare Pod of the test app (labelled app=NAME), as the Deployment's template makes it."""
    template = next(yaml.safe_load_all(deployment(name, grace=grace, service_account=service_account)))["spec"]["template"]
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **template["metadata"]},
                           "spec": template["spec"]}, sort_keys=False)
