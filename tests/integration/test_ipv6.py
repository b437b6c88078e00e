"""IPv6 pods: the agent's one listener takes IPv4 and IPv6 (the kubelet probes the pod IP, either family), IPv6
`listen` values, and the checks inject makes from probes reaching an app bound to IPv4 only, IPv6 only, or both."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import yaml

from agent.inject import probes
from agent.listen import any_address_socket
from agent.testing import http_request, run_agent
from tests.servers import listening_socket, serving_http

GENEROUS = 30.0


@pytest.fixture(autouse=True)
def ipv6() -> None:
    """Fail, with the reason, on a Python without IPv6 (never skip)."""
    if not socket.has_ipv6:
        pytest.fail("this Python has no IPv6")


def test_one_listener_answers_over_127_0_0_1_and_ipv6_loopback() -> None:
    with run_agent(None, listen=":0") as agent:  # `:port` is every address: [::], dual-stack
        assert any(f"serving probes on [::]:{agent.port} (IPv4 and IPv6)" in line for line in agent.logs())
        v4, v6 = f"http://127.0.0.1:{agent.port}", f"http://[::1]:{agent.port}"
        assert http_request(v4 + "/livez") == (200, "ok\n")
        assert http_request(v6 + "/livez") == (200, "ok\n")
        # An IPv4 client arrives as ::ffff:127.0.0.1 on the dual-stack socket: still loopback for admin calls.
        assert http_request(v4 + "/admin/drain", method="POST")[0] == 200
        assert http_request(v6 + "/readyz")[0] == 503
        assert http_request(v6 + "/admin/undrain", method="POST")[0] == 200
        assert http_request(v4 + "/readyz") == (200, "ok\n")


def test_an_ipv6_listen_address_serves_there_only() -> None:
    with run_agent(None, listen="[::1]:0") as agent:
        assert http_request(f"http://[::1]:{agent.port}/readyz") == (200, "ok\n")
        with pytest.raises(OSError):
            http_request(f"http://127.0.0.1:{agent.port}/readyz")


@pytest.mark.parametrize("value", ["'[::1:8686'", "'::1:8686'", "'[db.local]:8686'", "'[::g]:8686'"])
def test_a_bad_ipv6_listen_value_exits_2_naming_the_key(tmp_path, value: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "agent.yaml"
    path.write_text(f"listen: {value}\n")
    done = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(path)], capture_output=True, text=True,
                          timeout=GENEROUS * 2)
    assert done.returncode == 2, done.stderr
    assert f"{path}: listen: " in done.stderr and "Traceback" not in done.stderr
    flag = subprocess.run([sys.executable, "-m", "agent", "run", "--listen", value.strip("'")], capture_output=True,
                          text=True, timeout=GENEROUS * 2)
    assert flag.returncode == 2 and "--listen: " in flag.stderr and "Traceback" not in flag.stderr


def test_where_the_kernel_lacks_ipv6_the_listener_takes_ipv4() -> None:
    # This kernel has IPv6; a family it lacks altogether (AppleTalk) gets the same refusal, EAFNOSUPPORT, as AF_INET6
    # gets from a kernel booted with ipv6.disable=1.
    sock, host = any_address_socket(0, family=socket.AF_APPLETALK)
    with sock:
        assert (host, sock.family) == ("0.0.0.0", socket.AF_INET)
        with socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=GENEROUS):
            pass
    sock, host = any_address_socket(0)
    with sock:
        assert host == "::" and sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


# -- the checks inject makes from the app's probes reach it, whichever family it listens on -------------------

BINDS = {"IPv4 only": "127.0.0.1", "IPv6 only": "::1", "both": "::"}


@contextmanager
def http_app(host: str) -> Iterator[int]:
    with serving_http(host) as server:
        yield server.server_address[1]


@contextmanager
def tcp_app(host: str) -> Iterator[int]:
    with listening_socket(host) as sock:
        yield sock.getsockname()[1]


@contextmanager
def grpc_app(host: str) -> Iterator[int]:
    import grpc  # the grpc extra, in dev: missing, it fails the test, never skips
    from grpc_health.v1 import health, health_pb2_grpc
    executor = futures.ThreadPoolExecutor(max_workers=2)
    server = grpc.server(executor)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port(f"[{host}]:0" if ":" in host else f"{host}:0")
    assert port, f"cannot listen on {host}"
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait(GENEROUS)
        executor.shutdown(wait=False, cancel_futures=True)


APPS: dict[str, tuple[Callable[[str], Any], Callable[[int], dict[str, Any]]]] = {
    "httpGet": (http_app, lambda port: {"httpGet": {"path": "/healthz", "port": port}}),
    "tcpSocket": (tcp_app, lambda port: {"tcpSocket": {"port": port}}),
    "grpc": (grpc_app, lambda port: {"grpc": {"port": port}}),
}


@pytest.mark.parametrize("handler", list(APPS))
def test_a_check_made_from_a_probe_reaches_the_app_on_either_family(handler: str) -> None:
    start, probe_of = APPS[handler]
    checks: dict[str, Any] = {}
    with ExitStack() as apps:
        for name, host in BINDS.items():
            port = apps.enter_context(start(host))
            made = probes.convert({"name": "app"}, "readinessProbe", {**probe_of(port), "periodSeconds": 1})
            assert isinstance(made, probes.Converted), made
            checks[name.replace(" ", "-")] = made.body
        config = yaml.safe_dump({"checks": checks})
        with run_agent(config) as agent:
            for name in checks:
                agent.wait_status(f"/readyz/{name}", 200, timeout=GENEROUS)
            assert agent.status()["checks"]["IPv6-only"]["state"] == "passing"

