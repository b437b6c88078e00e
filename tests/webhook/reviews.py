"""AdmissionReview requests as the API server sends them, and a client that speaks TLS to the webhook."""

from __future__ import annotations

import base64
import copy
import json
import ssl
import uuid
from pathlib import Path
from typing import Any

import jsonpatch


def pod(name: str = "web-7d4b9", *, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Pod object as the API server has it at creation: defaults filled in, no status yet."""
    metadata: dict[str, Any] = {"name": name, "namespace": "shop", "labels": {"app": "web", **(labels or {})}}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {
            "containers": containers or [
                {"name": "web", "image": "shop/web:1.4", "ports": [{"name": "http", "containerPort": 8080}],
                 "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}},
                {"name": "worker", "image": "shop/worker:1.4",
                 "livenessProbe": {"exec": {"command": ["/bin/check"]}}},
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        },
        "status": {},
    }


def review(obj: dict[str, Any] | None, *, uid: str | None = None, dry_run: bool = False, operation: str = "CREATE",
           kind: dict[str, str] | None = None) -> dict[str, Any]:
    """An admission.k8s.io/v1 AdmissionReview request for `obj`."""
    kind = kind or {"group": "", "version": "v1", "kind": "Pod"}
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()), "kind": kind,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": kind, "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": (obj or {}).get("metadata", {}).get("name", ""), "namespace": "shop", "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": obj, "oldObject": None, "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def patched(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The object after the response's JSON Patch, applied as the API server would."""
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(obj), operations)
    return result


def client_context(*cafiles: Path) -> ssl.SSLContext:
    """A client that trusts only these certificates, and checks the host name."""
    context = ssl.create_default_context()
    for cafile in cafiles:
        context.load_verify_locations(str(cafile))
    return context
