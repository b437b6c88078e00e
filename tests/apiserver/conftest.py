"""Fixtures over a real etcd and kube-apiserver (tests/apiserver/harness.py), one pair for the session.

The binaries are built first when missing (tools/cluster.py build, as the cluster tests do): nothing here skips. Each test gets its own namespace; the service
accounts' tokens come from the TokenRequest API, written where the agent reads them.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.apiserver.harness import BIN, ApiFailure, ApiServer, missing, running
from tests.cluster.harness import ROOT

RBAC = ROOT / "deploy" / "kubernetes" / "endpoints-rbac.yaml"
POD, IP = "web-0", "198.18.200.7"  # the pod the agent under test is


def built() -> None:
    """Builds etcd and kube-apiserver with the cluster harness when they are missing (only a new machine pays)."""
    if missing():
        subprocess.run([sys.executable, str(ROOT / "tools" / "cluster.py"), "build"], check=True, timeout=3600)
    assert not missing(), f"{', '.join(missing())} still not built in {BIN}"


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    built()
    with running(tmp_path_factory.mktemp("apiserver")) as server:
        yield server


@pytest.fixture(scope="module")
def uncached_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A second pair whose API server has no watch cache: a watch from a compacted resource version reaches etcd,
    which answers 410 Gone (the cache of v1.34 serves such a watch quietly instead)."""
    built()
    with running(tmp_path_factory.mktemp("uncached"), ["--watch-cache=false"]) as server:
        yield server


@dataclass
class Namespace:
    """A namespace of the test, and what it holds."""

    api: ApiServer
    name: str

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.api.call("POST", f"{path}/namespaces/{self.name}/{body_plural(body)}", body)

    def unscheduled_pod(self) -> None:
        """The agent's pod (POD), bound to a node that runs no kubelet: a graceful deletion marks it and waits."""
        self.create("/api/v1", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD},
                                "spec": {"nodeName": "no-such-node", "serviceAccountName": "web",
                                         "automountServiceAccountToken": False,
                                         "containers": [{"name": "app", "image": "app:1"}]}})

    def mark_not_ready(self, slice_name: str) -> None:
        """The endpoints controller's part when the pod terminates: POD shown not ready in that slice."""
        current = self.api.call("GET", slices_path(self, slice_name))
        self.api.call("PUT", slices_path(self, slice_name), {
            **endpoint_slice(slice_name, endpoint(POD, IP, self.name, ready=False)), "metadata": current["metadata"]})

    def service_account(self, name: str) -> None:
        self.create("/api/v1", {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})

    def token(self, account: str, bound_to: tuple[str, str, str] | None = None) -> str:
        """A token of the service account from the TokenRequest API; bound to (kind, name, uid) when given, so
        that deleting that object invalidates it."""
        spec: dict[str, Any] = {"expirationSeconds": 3600}
        if bound_to is not None:
            spec["boundObjectRef"] = {"apiVersion": "v1", "kind": bound_to[0], "name": bound_to[1], "uid": bound_to[2]}
        answer = self.api.call("POST", f"/api/v1/namespaces/{self.name}/serviceaccounts/{account}/token",
                               {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return str(answer["status"]["token"])

    def grant(self, account: str) -> None:
        """deploy/kubernetes/endpoints-rbac.yaml's Role, and its RoleBinding for `account` (its ServiceAccount is
        made by service_account)."""
        for doc in yaml.safe_load_all(RBAC.read_text()):
            if doc["kind"] == "ServiceAccount":
                continue
            if doc["kind"] == "RoleBinding":
                doc["subjects"][0]["name"] = account
                doc["metadata"]["name"] = f"{account}-sidecar-agent-endpoints"
            try:
                self.create("/apis/rbac.authorization.k8s.io/v1", doc)
            except ApiFailure as exc:
                if exc.status != 409:  # the Role exists already
                    raise

    def account_dir(self, where: Path, token: str) -> Path:
        """A service-account directory as the kubelet mounts it: token, ca.crt, namespace."""
        where.mkdir(parents=True, exist_ok=True)
        (where / "token").write_text(token)
        (where / "ca.crt").write_bytes((self.api.pki / "ca.crt").read_bytes())
        (where / "namespace").write_text(self.name)
        return where

    def env(self, pod: str, ip: str) -> dict[str, str]:
        """The environment of an agent in this namespace: the API's address and the downward API's pod."""
        return {"KUBERNETES_SERVICE_HOST": self.api.host, "KUBERNETES_SERVICE_PORT": str(self.api.port),
                "POD_NAME": pod, "POD_NAMESPACE": self.name, "POD_IPS": ip}


def body_plural(body: dict[str, Any]) -> str:
    return {"ServiceAccount": "serviceaccounts", "Role": "roles", "RoleBinding": "rolebindings", "Pod": "pods",
            "EndpointSlice": "endpointslices"}[body["kind"]]


def new_namespace(api: ApiServer) -> Namespace:
    name = f"t-{uuid.uuid4().hex[:10]}"
    api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return Namespace(api, name)


@pytest.fixture
def namespace(apiserver: ApiServer) -> Iterator[Namespace]:
    ns = new_namespace(apiserver)
    yield ns
    apiserver.call("DELETE", f"/api/v1/namespaces/{ns.name}")


@pytest.fixture
def granted(namespace: Namespace, tmp_path: Path) -> Path:
    """A service account with the Role of deploy/, and its directory holding a token."""
    namespace.service_account("web")
    namespace.grant("web")
    return namespace.account_dir(tmp_path / "sa", namespace.token("web"))


def endpoint(pod: str, ip: str, ns: str, ready: bool = True) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": not ready},
            "targetRef": {"kind": "Pod", "namespace": ns, "name": pod}}


def endpoint_slice(name: str, *endpoints: dict[str, Any], service: str = "web") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "endpoints": list(endpoints), "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def slices_path(ns: Namespace, name: str = "") -> str:
    return f"/apis/discovery.k8s.io/v1/namespaces/{ns.name}/endpointslices" + (f"/{name}" if name else "")
