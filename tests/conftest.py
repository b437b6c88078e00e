"""Shared fixtures: real local servers for the checks to talk to."""

from __future__ import annotations

import pathlib
import socket
from collections.abc import Iterator

import pytest

from tests.servers import Certs, Target, serving_http

CLUSTER_TESTS = pathlib.Path(__file__).resolve().parent / "cluster"


def pytest_ignore_collect(collection_path: pathlib.Path, config: pytest.Config) -> bool | None:
    """tests/cluster (a real Kubernetes, built and started) runs only when named: `pytest tests/cluster`, a step of
    .ci/run of its own after the main suite, so that the README's `pytest` does not run it."""
    if collection_path != CLUSTER_TESTS:
        return None
    named = [pathlib.Path(arg.split("::")[0]).resolve() for arg in config.args]
    return not any(p == CLUSTER_TESTS or CLUSTER_TESTS in p.parents for p in named)


@pytest.fixture
def http_target() -> Iterator[Target]:
    """A Target on 127.0.0.1 (tests.servers.serving_http)."""
    with serving_http() as server:
        yield server


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
