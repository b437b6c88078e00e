"""The webhook served over real TLS on a free loopback port, with the small test mutation."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from agent.webhook.server import Certificates, WebhookMetrics, WebhookServer
from tests.servers import Certs
from tests.webhook.mutation import Refused, add_agent
from tests.webhook.reviews import client_context


@dataclass
class TlsPair:
    key: Path
    cert: Path


@dataclass
class Running:
    """A webhook serving in this test's event loop, and a client session that trusts its certificate."""

    server: WebhookServer
    metrics: WebhookMetrics
    tls: TlsPair
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def pairs(certs: Certs) -> dict[str, TlsPair]:
    """Two self-signed pairs for 127.0.0.1, made once per module: the served one and its replacement."""
    out = {}
    for name in ("first", "second"):
        key, cert = certs.make(f"webhook-{name}", dns_name="localhost", ip="127.0.0.1")
        out[name] = TlsPair(key, cert)
    return out


@pytest.fixture
def tls(pairs: dict[str, TlsPair], tmp_path: Path) -> TlsPair:
    """The first pair, copied where a test may replace the files."""
    pair = TlsPair(tmp_path / "tls.key", tmp_path / "tls.crt")
    shutil.copy(pairs["first"].key, pair.key)
    shutil.copy(pairs["first"].cert, pair.cert)
    return pair


@pytest.fixture
async def webhook(tls: TlsPair) -> AsyncIterator[Running]:
    metrics = WebhookMetrics()
    certificates = Certificates(str(tls.cert), str(tls.key),
                                on_reload=lambda ok: metrics.reloads.labels("success" if ok else "failure").inc())
    server = WebhookServer(certificates, add_agent, (Refused,), metrics)
    await server.start("127.0.0.1", 0)
    try:
        connector = aiohttp.TCPConnector(ssl=client_context(tls.cert))
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            yield Running(server, metrics, tls, session)
    finally:
        await server.close()
