"""Each kind of app probe becomes the check that does what the kubelet did, with the probe's own timing, or stays."""

from __future__ import annotations

from typing import Any

import pytest

from agent.inject.probes import Converted, Kept, convert

WEB = {"name": "web", "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9000}]}


def body(probe: dict[str, Any], key: str = "livenessProbe") -> dict[str, Any]:
    found = convert(WEB, key, probe)
    assert isinstance(found, Converted), found
    return found.body


def kept(probe: dict[str, Any]) -> Kept:
    found = convert(WEB, "readinessProbe", probe)
    assert isinstance(found, Kept)
    return found


def test_http_on_a_named_port_keeps_headers_and_timing() -> None:
    got = body({"httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "Cookie", "value": "a=b"}]},
                "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 4, "initialDelaySeconds": 7})
    assert got == {"type": "http", "url": "http://localhost:8080/healthz", "headers": {"Cookie": "a=b"},
                   "probes": ["liveness"], "interval": "5s", "timeout": "2s", "initial_delay": "7s",
                   "failure_threshold": 4, "success_threshold": 1}


def test_https_turns_certificate_verification_off_as_the_kubelet_does() -> None:
    got = body({"httpGet": {"path": "/z", "port": 8443, "scheme": "HTTPS"}}, "readinessProbe")
    assert got["url"] == "https://localhost:8443/z" and got["tls_verify"] is False and got["probes"] == ["readiness"]


def test_defaults_are_the_kubelets() -> None:
    got = body({"tcpSocket": {"port": 6379}}, "startupProbe")
    assert got == {"type": "tcp", "address": "localhost:6379", "probes": ["startup"], "interval": "10s", "timeout": "1s",
                   "failure_threshold": 3, "success_threshold": 1}


def test_native_grpc_keeps_its_service() -> None:
    assert body({"grpc": {"port": 9000, "service": "ready"}})["service"] == "ready"


@pytest.mark.parametrize("command", [
    ["/bin/grpc_health_probe", "-addr=:9000"],
    ["grpc_health_probe", "-addr", "localhost:9000", "-connect-timeout=2s"],
    ["sh", "-c", "grpc_health_probe -addr=127.0.0.1:9000 -service=api"],
])
def test_grpc_health_probe_becomes_a_grpc_check(command: list[str]) -> None:
    got = body({"exec": {"command": command}})
    assert got["type"] == "grpc" and got["address"] == "localhost:9000"


@pytest.mark.parametrize(("probe", "reason"), [
    ({"exec": {"command": ["cat", "/tmp/healthy"]}}, "app's filesystem"),
    ({"exec": {"command": ["grpc_health_probe", "-addr=:9000", "-tls"]}}, "-tls"),
    ({"exec": {"command": ["grpc_health_probe", "-addr=db:9000"]}}, "asks db"),
    ({"httpGet": {"host": "example.com", "path": "/", "port": 80}}, "host"),
    ({"httpGet": {"path": "/", "port": "metrics"}}, "not declared"),
    ({"httpGet": {"path": "/", "port": 80}, "tcpSocket": {"port": 80}}, "exactly one"),
    ({"httpGet": {"path": "/", "port": 80}, "periodSeconds": "10"}, "periodSeconds is not a whole number"),
])
def test_what_the_agent_cannot_do_stays_with_the_reason(probe: dict[str, Any], reason: str) -> None:
    assert reason in kept(probe).reason
