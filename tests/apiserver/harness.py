"""A real etcd and kube-apiserver on loopback, with certificates made on the spot: for tests/apiserver and bench/.

The binaries, the certificates and both command lines are the cluster harness's (tools/cluster.py builds Kubernetes
v1.34.4 and etcd v3.6.4 into ~/.cache/sidecar-agent/kubernetes/v1.34.4/bin). Both processes are started here and
stopped by their pids.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import children
from tests.cluster.harness import tool
from tests.servers import free_port

BIN: Path = tool.BIN
START_BOUND = 180.0  # seconds for etcd and the API server to come up on a loaded machine: a bound for a hang only


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate for 127.0.0.1, an admin client certificate, the SA key pair."""
    pki.mkdir(parents=True)
    tool.make_cert(pki, "ca", "/CN=test-ca", ca=True)
    tool.make_cert(pki, "apiserver", "/CN=kube-apiserver", sans="IP:127.0.0.1,DNS:localhost", server=True)
    tool.make_cert(pki, "admin", "/O=system:masters/CN=test-admin")
    tool.make_service_account_keys(pki)


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
            with exc:  # the error holds the response and its socket
                raise ApiFailure(exc.code, exc.read().decode(errors="replace")) from None

    def status_as(self, token: str, path: str) -> int:
        """The HTTP status of a GET of `path` with a bearer token (and no client certificate)."""
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {token}"})
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/readyz", context=self._context(), timeout=5) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def exited(self) -> list[str]:
        """The daemons that have exited, for a failure message."""
        return [f"{p.args[0]} exited {p.returncode}" for p in self.procs if p.poll() is not None]


def start(argv: list[str | Path], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):  # the API server first, then etcd
        children.stop(proc, 30)


def missing() -> list[str]:
    """The binaries not built yet."""
    return [name for name in ("etcd", "kube-apiserver") if not (BIN / name).is_file()]


@contextmanager
def running(root: Path, extra: Sequence[str] = ()) -> Iterator[ApiServer]:
    """etcd and the API server (with `extra` flags), ready, with their state and logs under `root`; both stopped on
    leaving."""
    pki = root / "pki"
    make_pki(pki)
    client, peer, secure = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    server = ApiServer("127.0.0.1", secure, pki, procs)
    try:
        procs.append(start(tool.etcd_command(root / "etcd", f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"),
                           root / "etcd.log"))
        procs.append(start([
            *tool.apiserver_command(pki, f"http://127.0.0.1:{client}", "127.0.0.1", secure, "198.19.250.0/24"),
            "--authorization-mode=RBAC",
            # Compacting etcd every few seconds makes an old resource version expire soon: a watch from it gets 410.
            *extra, "--etcd-compaction-interval=3s"], root / "kube-apiserver.log"))
        deadline = time.monotonic() + START_BOUND
        while not server.ready():
            if server.exited() or time.monotonic() > deadline:
                tail = (root / "kube-apiserver.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"the API server did not become ready: {server.exited()}\n{tail}")
            time.sleep(0.5)
        yield server
    finally:
        stop(procs)
