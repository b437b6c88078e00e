"""The shutdown sequence with real processes and real signals: order, timeouts, triggers, permissions."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.testing import AgentProcess, http_request, run_agent
from tests.servers import own_address

APP = str(pathlib.Path(__file__).resolve().parents[1] / "apps" / "app.py")


@dataclass
class App:
    proc: subprocess.Popen[bytes]
    log: pathlib.Path
    marker: str

    def events(self) -> list[tuple[str, float]]:
        if not self.log.exists():
            return []
        return [(line.split()[0], float(line.split()[1])) for line in self.log.read_text().splitlines() if line]

    def when(self, name: str) -> float | None:
        return next((t for event, t in self.events() if event == name), None)


@pytest.fixture
def start_app(tmp_path: pathlib.Path) -> Iterator:  # type: ignore[type-arg]
    apps: list[App] = []

    def start(*args: str) -> App:
        marker = f"watched-app-{os.getpid()}-{len(apps)}-{os.urandom(3).hex()}"
        log = tmp_path / f"{marker}.log"
        proc = subprocess.Popen([sys.executable, APP, "--log", str(log), *args, marker])
        app = App(proc, log, marker)
        apps.append(app)
        deadline = time.monotonic() + 10
        while not any(e.startswith("started") for e, _ in app.events()):
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.01)
        return app

    yield start
    for app in apps:
        if app.proc.poll() is None:
            app.proc.kill()
        app.proc.wait()


def watching(app: App, shutdown: str = "", extra: str = "") -> str:
    return (f"app: {{match: {{cmdline: '{app.marker}'}}{extra}}}\n"
            "checks: {proc: {type: process, interval: 100ms, probes: [liveness]}}\n"
            f"shutdown: {{{shutdown}}}\n")


def seen(agent: AgentProcess, pid: int) -> None:
    agent.wait_for(lambda: (agent.status().get("app") or {}).get("pid") == pid)


def test_readiness_fails_before_the_app_is_signalled_and_the_signal_waits_for_the_drain(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    with run_agent(watching(app, "drain_delay: 1s, stop_timeout: 5s")) as agent:
        seen(agent, app.proc.pid)
        agent.wait_status("/readyz", 200)
        triggered = time.monotonic()
        agent.signal(signal.SIGTERM)
        agent.wait_status("/readyz", 503, "[-]shutdown failed: agent is draining")
        not_ready = time.monotonic()
        assert agent.get("/livez")[0] == 200
        assert agent.wait_exit() == 0
        signalled = app.when("SIGTERM")
        assert signalled is not None and app.proc.wait(10) == 0
        assert triggered < not_ready < signalled
        assert signalled - triggered >= 1.0
        assert "the app exited" in " ".join(agent.messages())


def test_an_app_that_ignores_sigterm_is_killed_only_after_stop_timeout(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app("--on-term", "ignore")
    with run_agent(watching(app, "drain_delay: 200ms, stop_timeout: 1s")) as agent:
        seen(agent, app.proc.pid)
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit() == 0
        assert app.proc.wait(10) == -signal.SIGKILL
        died = time.monotonic()
        signalled = app.when("SIGTERM")
        assert signalled is not None and died - signalled >= 1.0
        pid = app.proc.pid
        assert any(m.startswith(f"the app did not exit within stop_timeout 1s: pid {pid} (")
                   and f") still runs; sending SIGKILL to pid {pid} (" in m for m in agent.messages())



def test_a_second_sigterm_changes_nothing(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    with run_agent(watching(app, "drain_delay: 1s")) as agent:
        seen(agent, app.proc.pid)
        triggered = time.monotonic()
        agent.signal(signal.SIGTERM)
        agent.wait_for(lambda: "received SIGTERM" in agent.messages())
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit() == 0
        signalled = app.when("SIGTERM")
        assert signalled is not None and signalled - triggered >= 1.0
        assert "received SIGTERM again; the shutdown already runs" in agent.messages()


def test_the_agent_exits_at_once_when_the_app_is_already_gone(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    with run_agent(watching(app, "drain_delay: 20s, grace_period: 60s")) as agent:
        seen(agent, app.proc.pid)
        app.proc.kill()
        app.proc.wait()
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit(timeout=10) == 0
        assert "shutdown (SIGTERM): the app has already exited, stopping at once" in agent.messages()


def test_an_invisible_app_is_warned_about_and_the_sequence_still_drains() -> None:
    config = "app: {match: {cmdline: 'no-such-app-anywhere-x1y2'}}\nshutdown: {drain_delay: 300ms}\n"
    with run_agent(config) as agent:
        agent.wait_for(lambda: any("is not visible" in m for m in agent.messages()))
        agent.signal(signal.SIGTERM)
        agent.wait_status("/readyz", 503, "draining")
        assert agent.wait_exit() == 0
        assert any("so no signal to relay" in m for m in agent.messages())


def test_prestop_blocks_until_the_app_is_stopped(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    with run_agent(watching(app, "drain_delay: 500ms")) as agent:
        seen(agent, app.proc.pid)
        answer = agent.get("/prestop", timeout=30)
        returned = time.monotonic()
        signalled = app.when("SIGTERM")
        assert answer == (200, "shutdown: exited\n")
        assert signalled is not None and signalled < returned
        assert app.proc.wait(10) == 0
        assert agent.wait_exit() == 0


def test_prestop_without_relay_returns_after_the_drain_and_leaves_the_app_alone(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    with run_agent(watching(app, "drain_delay: 500ms, relay_signal: false")) as agent:
        seen(agent, app.proc.pid)
        started = time.monotonic()
        assert agent.get("/prestop", timeout=30) == (200, "shutdown: not_relayed\n")
        assert time.monotonic() - started >= 0.5
        assert agent.wait_exit() == 0
        assert app.proc.poll() is None and app.when("SIGTERM") is None


def test_prestop_callers_all_join_one_sequence(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    with run_agent(watching(app, "drain_delay: 300ms")) as agent:
        seen(agent, app.proc.pid)
        answers: list[tuple[int, str]] = []
        callers = [threading.Thread(target=lambda: answers.append(agent.get("/prestop", timeout=30))) for _ in range(3)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(30)
        assert answers == [(200, "shutdown: exited\n")] * 3
        assert [e for e, _ in app.events()].count("SIGTERM") == 1


def test_quitquitquit_stops_the_agent() -> None:
    with run_agent("shutdown: {drain_delay: 0s}") as agent:
        assert agent.get("/quitquitquit", method="POST") == (200, "shutting down\n")
        assert agent.wait_exit() == 0


def test_drain_and_undrain_by_hand_change_readiness_only() -> None:
    with run_agent() as agent:
        assert agent.get("/admin/drain", method="POST")[0] == 200
        assert agent.get("/readyz")[1] == "[-]admin-drain failed: drained by /admin/drain\nreadyz check failed\n"
        assert agent.status()["phase"] == "running" and agent.get("/livez")[0] == 200
        assert agent.get("/admin/undrain", method="POST")[0] == 200
        assert agent.get("/readyz") == (200, "ok\n")


def test_exit_with_app_stops_the_agent_when_the_app_exits(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    with run_agent(watching(app, "drain_delay: 20s, grace_period: 60s", ", exit_with_app: true")) as agent:
        seen(agent, app.proc.pid)
        app.proc.send_signal(signal.SIGTERM)  # the app ends by itself, only once the agent has seen it (no race on a busy machine)
        assert app.proc.wait(5) == 0
        assert agent.wait_exit(timeout=15) == 0


def test_a_signal_the_agent_may_not_send_is_reported_with_the_fix() -> None:
    # The app runs as nobody; the agent as root without CAP_KILL, like a container that lacks it.
    marker = f"nobody-app-{os.getpid()}-{os.urandom(3).hex()}"
    app = subprocess.Popen(["/bin/sh", "-c", "sleep 600", marker], user=65534, start_new_session=True)
    setpriv = ["setpriv", "--bounding-set=-kill", "--inh-caps=-kill"]
    config = (f"app: {{match: {{cmdline: 'sh -c sleep 600 {marker}'}}}}\n"
              "shutdown: {drain_delay: 100ms, stop_timeout: 500ms}\n")
    try:
        with run_agent(config, prefix=setpriv) as agent:
            seen(agent, app.pid)
            assert 'sidecar_shutdown_outcome_total{outcome="denied"} 0.0' in agent.get("/metrics")[1]
            # Refused, the sequence ends at once, so that the kubelet's own SIGTERM comes with time to spare.
            assert agent.get("/prestop", timeout=30) == (200, "shutdown: denied\n")
            assert agent.wait_exit() == 0
            errors = [r["message"] for r in agent.log_records() if r["level"] == "error"]
            assert len(errors) == 1, errors
            assert errors[0].startswith("cannot send SIGTERM to the app (cmdline /") and "permission denied" in errors[0]
            assert "runAsUser" in errors[0] and "add: [KILL]" in errors[0] and "shareProcessNamespace" in errors[0]
            assert app.poll() is None
    finally:
        os.killpg(app.pid, signal.SIGKILL)  # sh and the sleep it started
        app.wait()


def test_admin_calls_from_another_address_need_the_token() -> None:
    host = own_address()
    with run_agent("admin: {token_env: AGENT_TOKEN}\n", env={"AGENT_TOKEN": "t0ken-xyz"}, listen="0.0.0.0:0") as agent:
        url = f"http://{host}:{agent.port}/admin/drain"
        assert http_request(url, method="POST")[0] == 401
        assert http_request(url, method="POST", headers={"Authorization": "Bearer wrong"})[0] == 403
        assert http_request(url, method="POST", headers={"Authorization": "Basic dDBrZW4teHl6"})[0] == 401
        assert agent.get("/readyz") == (200, "ok\n")
        assert http_request(url, method="POST", headers={"Authorization": "Bearer t0ken-xyz"})[0] == 200
        assert agent.get("/readyz")[0] == 503
        assert http_request(f"http://{host}:{agent.port}/readyz")[0] == 503
        assert not any("t0ken-xyz" in line for line in agent.logs())


def test_admin_calls_from_another_address_are_refused_without_a_configured_token() -> None:
    host = own_address()
    with run_agent(listen="0.0.0.0:0") as agent:
        for path, method in (("/admin/drain", "POST"), ("/quitquitquit", "POST"), ("/prestop", "GET")):
            code, body = http_request(f"http://{host}:{agent.port}{path}", method=method,
                                      headers={"Authorization": "Bearer anything"})
            assert code == 403 and "loopback" in body
        assert agent.status()["phase"] == "running" and agent.get("/readyz")[0] == 200


def test_the_drain_ends_by_its_timeout_with_many_idle_connections_open(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    port = server.getsockname()[1]
    # Idle keep-alive connections, as a client's pool keeps them: established, never closed by the client.
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(500)]
    try:
        config = watching(app, f"drain_delay: 0s, drain_connections: {{port: {port}, timeout: 1s}}, stop_timeout: 5s")
        with run_agent(config) as agent:
            seen(agent, app.proc.pid)
            triggered = time.monotonic()
            agent.signal(signal.SIGTERM)
            assert agent.wait_exit() == 0
        signalled = app.when("SIGTERM")
        assert signalled is not None and signalled - triggered >= 1.0
        assert signalled - triggered < 15.0  # the drain's timeout is the bound: it ends at 1 s, not when clients go
        assert f"500 connections on port {port} still open after 1s; going on" in agent.messages()
    finally:
        for sock in clients:
            sock.close()
        server.close()
