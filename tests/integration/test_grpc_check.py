"""The `grpc` check against real in-process gRPC servers (grpcio with grpc_health's HealthServicer), through the real agent."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # the grpc extra (in dev): missing, it fails the collection, never skips
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agent.config import ConfigError, load
from agent.testing import AgentProcess, run_agent
from tests.servers import Certs

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HealthServicer: Any = health.HealthServicer


class CountingHealth(HealthServicer):  # type: ignore[misc]
    """grpc_health's servicer, counting the Check calls it answers."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.calls = 0

    def Check(self, request: Any, context: Any) -> Any:
        with self._lock:
            self.calls += 1
        return super().Check(request, context)


@dataclass
class HealthServer:
    """A grpcio server on loopback with the standard health service."""

    server: Any
    executor: futures.ThreadPoolExecutor
    health: CountingHealth
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(None).wait(10)
        self.executor.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def start_server() -> Iterator[Callable[..., HealthServer]]:
    """Start health servers (`port=0`: a free one; `tls=(key_pem, cert_pem)`); all are stopped after the test."""
    started: list[HealthServer] = []

    def start(port: int = 0, tls: tuple[bytes, bytes] | None = None) -> HealthServer:
        executor = futures.ThreadPoolExecutor(max_workers=4)
        server = grpc.server(executor)
        servicer = CountingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        where = f"127.0.0.1:{port}"
        bound = server.add_secure_port(where, grpc.ssl_server_credentials([tls])) if tls else server.add_insecure_port(where)
        assert bound, f"cannot listen on {where}"
        server.start()
        started.append(HealthServer(server, executor, servicer, bound))
        return started[-1]

    yield start
    for one in started:
        one.stop()


class CountingProxy:
    """A TCP proxy on loopback in front of `target_port` that counts the connections it accepts."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._sockets.append(client)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.append(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self._thread.join(5)
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy() -> Iterator[Callable[[int], CountingProxy]]:
    made: list[CountingProxy] = []

    def make(target_port: int) -> CountingProxy:
        made.append(CountingProxy(target_port))
        return made[-1]

    yield make
    for one in made:
        one.close()


def agent_config(**checks: dict[str, Any]) -> str:
    """An agent config (JSON is YAML) with these grpc checks, run every 100ms and failing at the first failure."""
    body = {name: {"type": "grpc", "interval": "100ms", "failure_threshold": 1, **keys} for name, keys in checks.items()}
    return json.dumps({"log": {"level": "debug"}, "checks": body}, indent=2)


def runs(agent: AgentProcess, check: str) -> int:
    """How many times the agent has run `check`, from /metrics."""
    code, text = agent.get("/metrics")
    assert code == 200
    prefix = "sidecar_check_runs_total{"
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith(prefix) and f'check="{check}"' in line)


def stop_cleanly(agent: AgentProcess) -> None:
    """Stop the agent: exit 0, and nothing but its JSON log lines printed (no grpc core logging, no tracebacks)."""
    assert agent.stop_fast() == 0, "\n".join(agent.logs())
    assert [line for line in agent.logs() if not line.startswith("{")] == []


def test_serving_passes_and_not_serving_fails_readiness_until_the_server_serves_again(
        start_server: Callable[..., HealthServer]) -> None:
    server = start_server()
    with run_agent(agent_config(rpc={"address": server.address})) as agent:
        agent.wait_status("/readyz", 200)
        assert agent.status()["checks"]["rpc"]["last_result"]["message"] == "SERVING"
        server.health.set("", NOT_SERVING)
        body = agent.wait_status("/readyz", 503, "[-]rpc failed: NOT_SERVING")
        assert "NOT_SERVING" in body
        server.health.set("", SERVING)
        agent.wait_status("/readyz", 200)
        stop_cleanly(agent)


def test_a_named_service_the_server_does_not_know_is_service_unknown(start_server: Callable[..., HealthServer]) -> None:
    server = start_server()
    with run_agent(agent_config(rpc={"address": server.address, "service": "billing.v1.Billing"})) as agent:
        agent.wait_status("/readyz", 503, "SERVICE_UNKNOWN: the server does not know service 'billing.v1.Billing'")
        server.health.set("billing.v1.Billing", NOT_SERVING)
        agent.wait_status("/readyz", 503, "[-]rpc failed: NOT_SERVING: service 'billing.v1.Billing'")
        server.health.set("billing.v1.Billing", SERVING)
        agent.wait_status("/readyz", 200)
        stop_cleanly(agent)


def test_a_stopped_server_is_a_refused_connection_and_a_restarted_one_passes_again(
        start_server: Callable[..., HealthServer]) -> None:
    server = start_server()
    with run_agent(agent_config(rpc={"address": server.address})) as agent:
        agent.wait_status("/readyz", 200)
        server.stop()
        agent.wait_status("/readyz", 503, f"[-]rpc failed: connection refused by {server.address}")
        # The same port again: the kept channel was dropped on the failure, so no reconnect backoff delays this.
        start_server(port=server.port)
        agent.wait_status("/readyz", 200)
        stop_cleanly(agent)


def test_a_server_that_accepts_and_never_answers_times_out(listener: socket.socket) -> None:
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    with run_agent(agent_config(rpc={"address": address, "timeout": "1s"})) as agent:
        agent.wait_status("/readyz", 503, "[-]rpc failed: timed out after 1s")
        # The timed-out runs were cancelled cleanly: the pollers live on and the agent stays healthy.
        assert agent.get("/agent/livez")[0] == 200
        agent.wait_for(lambda: runs(agent, "rpc") >= 3)
        assert agent.get("/agent/livez")[0] == 200
        stop_cleanly(agent)


def test_a_server_without_the_health_service_is_named_as_such(start_server: Callable[..., HealthServer]) -> None:
    executor = futures.ThreadPoolExecutor(max_workers=2)
    bare = grpc.server(executor)
    port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    try:
        with run_agent(agent_config(rpc={"address": f"127.0.0.1:{port}"})) as agent:
            agent.wait_status("/readyz", 503, "the server does not implement grpc.health.v1")
            stop_cleanly(agent)
    finally:
        bare.stop(None).wait(10)
        executor.shutdown(wait=False)


def test_reuse_connection_keeps_one_connection_and_false_opens_one_every_run(
        start_server: Callable[..., HealthServer], proxy: Callable[[int], CountingProxy]) -> None:
    kept_server, fresh_server = start_server(), start_server()
    kept, fresh = proxy(kept_server.port), proxy(fresh_server.port)
    config = agent_config(kept={"address": kept.address, "timeout": "5s"},
                          fresh={"address": fresh.address, "timeout": "5s", "reuse_connection": False})
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 200)
        agent.wait_for(lambda: kept_server.health.calls >= 10 and fresh_server.health.calls >= 10, timeout=30)
        # Every answered call came after its connection was accepted: read the calls first.
        fresh_calls = fresh_server.health.calls
        assert fresh.accepted >= fresh_calls >= 10
        assert kept.accepted == 1, f"{kept.accepted} connections for {kept_server.health.calls} calls"
        agent.wait_status("/readyz", 200)
        stop_cleanly(agent)


def test_reuse_connection_false_opens_its_own_connection_even_beside_a_kept_one_to_the_same_address(
        start_server: Callable[..., HealthServer], proxy: Callable[[int], CountingProxy]) -> None:
    server = start_server()
    front = proxy(server.port)
    config = agent_config(kept={"address": front.address, "timeout": "5s"},
                          fresh={"address": front.address, "timeout": "5s", "reuse_connection": False})
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 200)
        agent.wait_for(lambda: runs(agent, "fresh") >= 10, timeout=30)
        fresh_runs = runs(agent, "fresh")
        # one kept connection, and one more for every run of `fresh`: none of them borrowed the kept one
        assert front.accepted >= fresh_runs + 1
        stop_cleanly(agent)


def test_tls_with_a_ca_file_and_server_name_passes_and_a_wrong_ca_or_name_fails_clearly(
        start_server: Callable[..., HealthServer], certs: Certs, tmp_path: Path) -> None:
    key, cert = certs.make("server", "grpc.test.internal")
    _, other_ca = certs.make("other", "grpc.test.internal")
    server = start_server(tls=(key.read_bytes(), cert.read_bytes()))
    tls = {"address": server.address, "tls": True}
    config = agent_config(
        good={**tls, "ca_file": str(cert), "server_name": "grpc.test.internal"},
        fresh={**tls, "ca_file": str(cert), "server_name": "grpc.test.internal", "reuse_connection": False},
        wrong_ca={**tls, "ca_file": str(other_ca), "server_name": "grpc.test.internal"},
        no_name={**tls, "ca_file": str(cert)},
        no_ca_file={**tls, "ca_file": str(tmp_path / "missing.pem"), "server_name": "grpc.test.internal"},
        plaintext={"address": server.address},
    )
    with run_agent(config) as agent:
        agent.wait_status("/readyz/good", 200)
        agent.wait_status("/readyz/fresh", 200)
        agent.wait_status("/readyz/wrong_ca", 503, f"TLS handshake with {server.address} failed: CERTIFICATE_VERIFY_FAILED")
        agent.wait_status("/readyz/no_name", 503,
                          f"the TLS certificate of {server.address} is not valid for the name '127.0.0.1' (set server_name")
        agent.wait_status("/readyz/no_ca_file", 503, f"cannot read ca_file {tmp_path / 'missing.pem'}: No such file")
        agent.wait_status("/readyz/plaintext", 503, f"unavailable: cannot connect to {server.address}")
        assert agent.status()["checks"]["good"]["last_result"]["message"] == "SERVING"
        stop_cleanly(agent)


def test_a_tls_check_of_a_plaintext_server_names_the_handshake(start_server: Callable[..., HealthServer]) -> None:
    server = start_server()
    with run_agent(agent_config(rpc={"address": server.address, "tls": True})) as agent:
        agent.wait_status("/readyz", 503, f"TLS handshake with {server.address} failed")
        stop_cleanly(agent)


def test_grpc_beside_exec_checks_children_run_and_grpc_core_prints_nothing(
        start_server: Callable[..., HealthServer], certs: Certs) -> None:
    key, cert = certs.make("quiet", "grpc.test.internal")
    server = start_server(tls=(key.read_bytes(), cert.read_bytes()))
    checks = {
        # no ca_file: the system's roots do not trust the self-signed certificate; grpc core would log every handshake
        "rpc": {"type": "grpc", "address": server.address, "tls": True, "interval": "100ms", "failure_threshold": 1},
        # the agent's children do not inherit the GRPC_VERBOSITY set while grpc loaded
        "child": {"type": "exec", "command": ["sh", "-c", 'test -z "${GRPC_VERBOSITY+set}"'], "interval": "100ms"},
    }
    with run_agent(json.dumps({"checks": checks})) as agent:
        agent.wait_status("/readyz/rpc", 503, "CERTIFICATE_VERIFY_FAILED")
        agent.wait_for(lambda: runs(agent, "rpc") >= 3 and runs(agent, "child") >= 3)
        agent.wait_status("/readyz/child", 200)
        stop_cleanly(agent)


def test_importing_the_module_and_validating_a_config_does_not_load_grpc() -> None:
    script = textwrap.dedent("""
        import sys
        import agent.checks.grpc_check
        from agent import checks, config
        cfg = config.load("checks: {rpc: {type: grpc, address: 'localhost:50051', service: x}}", {})
        config.dump(cfg)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "grpc_health") or m.startswith("google.protobuf"))
        assert not heavy, heavy
        spec = cfg.checks[0]
        checks.load_type("grpc").create(spec, None)  # creating a check is what loads grpc
        assert "grpc" in sys.modules and "grpc_health.v1.health_pb2" in sys.modules
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_check_config_prints_a_grpc_check_normalised(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(textwrap.dedent("""
        checks:
          api:
            type: grpc
            address: " localhost:50051"
            tls: "true"
            ca_file: /etc/agent/ca.pem
            server_name: api.internal
            reuse_connection: "false"
            probes: [readiness, liveness]
          db-side:
            type: grpc
            address: "[::1]:9000"
            service: grpc.health.v1.Health
    """))
    done = subprocess.run([sys.executable, "-m", "agent", "check-config", str(path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ})
    assert done.returncode == 0, done.stderr
    checks = yaml.safe_load(done.stdout)["checks"]
    common = {"interval": "10s", "timeout": "1s", "initial_delay": "0s", "failure_threshold": 3, "success_threshold": 1,
              "allow_in_liveness": False}
    assert checks["api"] == {"type": "grpc", "probes": ["readiness", "liveness"], **common, "address": "localhost:50051",
                             "service": "", "tls": True, "ca_file": "/etc/agent/ca.pem", "server_name": "api.internal",
                             "reuse_connection": False}
    assert checks["db-side"] == {"type": "grpc", "probes": ["readiness"], **common, "address": "[::1]:9000",
                                 "service": "grpc.health.v1.Health", "tls": False, "reuse_connection": True}
    assert "ok, 2 checks" in done.stderr


@pytest.mark.parametrize(("body", "problem"), [
    ("{type: grpc, address: 'a:1', ca_file: /ca.pem}",
     ("checks.rpc", "ca_file and server_name apply only to TLS: set tls: true, or remove them")),
    ("{type: grpc, address: 'a:1', server_name: x}",
     ("checks.rpc", "ca_file and server_name apply only to TLS: set tls: true, or remove them")),
    ("{type: grpc, address: 'api.internal:50051', probes: [liveness]}",
     ("checks.rpc.probes", "a grpc check of a dependency under liveness restarts the app whenever the dependency blips")),
    ("{type: grpc, address: 50051}", ("checks.rpc.address", "expected an address like 127.0.0.1:8080")),
    ("{type: grpc, address: 'a:1', servce: x}", ("checks.rpc.servce", "unknown key; did you mean 'service'?")),
    ("{type: grpc, address: 'a:1', tls: maybe}", ("checks.rpc.tls", "expected true or false, got 'maybe'")),
])
def test_the_loader_refuses_a_bad_grpc_check_naming_the_key(body: str, problem: tuple[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load(f"checks: {{rpc: {body}}}", {})
    assert any(path == problem[0] and problem[1] in message for path, message in caught.value.problems), caught.value.problems


def test_a_loopback_grpc_check_may_feed_liveness() -> None:
    config = load("checks: {rpc: {type: grpc, address: 'localhost:50051', probes: [liveness]}}", {})
    assert config.checks[0].probes == ("liveness",)
