"""Shared fixtures: real local servers for the checks to talk to."""

from __future__ import annotations

import contextlib
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.servers import Certs

CLUSTER_TESTS = pathlib.Path(__file__).resolve().parent / "cluster"


def pytest_ignore_collect(collection_path: pathlib.Path, config: pytest.Config) -> bool | None:
    """tests/cluster (a real Kubernetes, built and started) runs only when named: `pytest tests/cluster`, a step of
    .ci/run of its own after the main suite, so that the README's `pytest` does not run it."""
    if collection_path != CLUSTER_TESTS:
        return None
    named = [pathlib.Path(arg.split("::")[0]).resolve() for arg in config.args]
    return not any(p == CLUSTER_TESTS or CLUSTER_TESTS in p.parents for p in named)


class Target(ThreadingHTTPServer):
    """A real HTTP server on loopback whose answer a test can change."""

    daemon_threads = True
    status = 200
    body = b"ok"
    delay = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Target

    def do_GET(self) -> None:
        if self.server.delay:
            time.sleep(self.server.delay)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a check timed out and hung up first
            self.send_response(self.server.status)
            self.send_header("Content-Length", str(len(self.server.body)))
            self.end_headers()
            self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_target() -> Iterator[Target]:
    server = Target(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening TCP socket on loopback (the kernel completes handshakes without accept)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Self-signed certificates for the TLS tests, in a folder shared by one test module."""
    return Certs(tmp_path_factory.mktemp("certs"))
