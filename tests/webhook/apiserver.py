"""A stand-in for the API server's `GET /api/v1/nodes`: HTTPS on loopback, a bearer token, NodeList JSON in pages
(`limit`, `continue`) as the real one answers, and its Status objects for refusals."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.servers import Certs


def node(name: str, kubelet: str) -> dict[str, Any]:
    """A Node as the API server lists it (the parts a kubelet reports, trimmed)."""
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"nodeInfo": {"kubeletVersion": kubelet, "kubeProxyVersion": kubelet,
                                    "containerRuntimeVersion": "containerd://1.7.22", "operatingSystem": "linux",
                                    "architecture": "amd64"}}}


def status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    return web.Response(status=code, text=json.dumps(body), content_type="application/json")


@dataclass
class FakeApiServer:
    """The nodes it lists, the token it accepts, and what it was asked."""

    token: str
    nodes: list[dict[str, Any]] = field(default_factory=list)
    forbidden: bool = False  # answer 403 as when the RBAC rule is missing
    requests: list[dict[str, str]] = field(default_factory=list)  # each request's query and Authorization

    async def list_nodes(self, request: web.Request) -> web.Response:
        self.requests.append({**request.query, "authorization": request.headers.get("Authorization", "")})
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        if self.forbidden:
            return status(403, "Forbidden", 'nodes is forbidden: User "system:serviceaccount:sidecar-agent:'
                          'sidecar-agent-webhook" cannot list resource "nodes" in API group "" at the cluster scope')
        start = int(request.query.get("continue") or 0)
        limit = int(request.query.get("limit") or 0) or len(self.nodes)
        page = self.nodes[start:start + limit]
        more = start + limit < len(self.nodes)
        body = {"kind": "NodeList", "apiVersion": "v1",
                "metadata": {"resourceVersion": "4242", **({"continue": str(start + limit)} if more else {})},
                "items": page}
        return web.Response(text=json.dumps(body), content_type="application/json")


@dataclass
class Served:
    api: FakeApiServer
    url: str
    ca: Path
    token_file: Path
    runner: web.AppRunner


async def serve(certs: Certs, folder: Path, token: str, nodes: list[dict[str, Any]]) -> Served:
    """The fake API server on a free loopback port over TLS; its certificate is its own CA, as ca.crt holds."""
    key, cert = certs.make("apiserver", ip="127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    api = FakeApiServer(token, nodes)
    app = web.Application()
    app.router.add_get("/api/v1/nodes", api.list_nodes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    token_file = folder / "token"
    token_file.write_text(token)
    return Served(api, f"https://127.0.0.1:{port}", cert, token_file, runner)
