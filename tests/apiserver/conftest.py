"""A real etcd and kube-apiserver on loopback, started for these tests, with certificates made on the spot.

The binaries come from the cluster harness's cache (tools/cluster.py builds Kubernetes v1.34.4 and etcd v3.6.4 into
~/.cache/sidecar-agent/kubernetes/v1.34.4/bin); without them every test here is skipped, saying so. Each test gets
its own namespace; the service accounts' tokens come from the TokenRequest API, written where the agent reads them.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VERSION = "v1.34.4"
BIN = Path(os.environ.get("SIDECAR_AGENT_CACHE", Path.home() / ".cache" / "sidecar-agent")) / "kubernetes" / VERSION / "bin"
RBAC = ROOT / "deploy" / "kubernetes" / "endpoints-rbac.yaml"
START_BOUND = 180.0  # seconds for etcd and the API server to come up on a loaded machine: a bound for a hang only


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate for 127.0.0.1, an admin client certificate, the SA key pair."""
    pki.mkdir()
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", pki / "ca.key")
    openssl("req", "-x509", "-new", "-key", pki / "ca.key", "-subj", "/CN=test-ca", "-days", "2", "-out", pki / "ca.crt",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, subject, ext in (
            ("apiserver", "/CN=kube-apiserver",
             "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"),
            ("admin", "/O=system:masters/CN=test-admin", "extendedKeyUsage=clientAuth\n")):
        (pki / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + ext)
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", pki / f"{name}.key")
        openssl("req", "-new", "-key", pki / f"{name}.key", "-subj", subject, "-out", pki / f"{name}.csr")
        openssl("x509", "-req", "-in", pki / f"{name}.csr", "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", pki / f"{name}.ext", "-out", pki / f"{name}.crt")
    openssl("genrsa", "-out", pki / "sa.key", "2048")
    openssl("rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub")


class ApiFailure(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status


@dataclass
class ApiServer:
    """The running pair, and an admin client of the API (a client certificate of system:masters)."""

    host: str
    port: int
    pki: Path
    procs: list[subprocess.Popen[bytes]]
    logs: Path

    @property
    def base(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return context

    def call(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self._context(), timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiFailure(exc.code, exc.read().decode(errors="replace")) from None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/readyz", context=self._context(), timeout=5) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def alive(self) -> list[str]:
        """The daemons that have exited (with their log's tail), for a failure message."""
        return [f"{p.args[0]} exited {p.returncode}" for p in self.procs if p.poll() is not None]


def start(argv: list[str | Path], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):  # the API server first, then etcd
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    missing = [b for b in ("etcd", "kube-apiserver") if not (BIN / b).is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not built in {BIN} (tools/cluster.py build makes them)")
    root = tmp_path_factory.mktemp("apiserver")
    pki = root / "pki"
    make_pki(pki)
    client, peer, secure = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    server = ApiServer("127.0.0.1", secure, pki, procs, root)
    try:
        procs.append(start([BIN / "etcd", "--name", "test", "--data-dir", root / "etcd",
                            "--listen-client-urls", f"http://127.0.0.1:{client}",
                            "--advertise-client-urls", f"http://127.0.0.1:{client}",
                            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                            "--initial-cluster", f"test=http://127.0.0.1:{peer}", "--unsafe-no-fsync",
                            "--log-level", "warn"], root / "etcd.log"))
        procs.append(start([
            BIN / "kube-apiserver", f"--etcd-servers=http://127.0.0.1:{client}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={secure}",
            f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
            f"--client-ca-file={pki}/ca.crt", "--service-cluster-ip-range=10.250.0.0/24",
            f"--service-account-key-file={pki}/sa.pub", f"--service-account-signing-key-file={pki}/sa.key",
            "--service-account-issuer=https://kubernetes.default.svc", "--authorization-mode=RBAC",
            "--profiling=false", "--v=1"], root / "kube-apiserver.log"))
        deadline = time.monotonic() + START_BOUND
        while not server.ready():
            if server.alive() or time.monotonic() > deadline:
                tail = (root / "kube-apiserver.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"the API server did not become ready: {server.alive()}\n{tail}")
            time.sleep(0.5)
        yield server
    finally:
        stop(procs)


@dataclass
class Namespace:
    """A namespace of the test, and what it holds."""

    api: ApiServer
    name: str

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.api.call("POST", f"{path}/namespaces/{self.name}/{body_plural(body)}", body)

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


@pytest.fixture
def namespace(apiserver: ApiServer) -> Iterator[Namespace]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    apiserver.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield Namespace(apiserver, name)
    apiserver.call("DELETE", f"/api/v1/namespaces/{name}")
