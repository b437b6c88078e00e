"""The real agent process: default config, signals, probes, /status, /metrics, config errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from agent.testing import http_request, run_agent

ALL_METRICS = [
    "sidecar_check_up", "sidecar_check_duration_seconds", "sidecar_check_runs_total", "sidecar_check_transitions_total",
    "sidecar_probe_up", "sidecar_probe_requests_total", "sidecar_phase", "sidecar_app_up", "sidecar_app_restarts_total",
    "sidecar_app_resident_memory_bytes", "sidecar_app_cpu_seconds_total", "sidecar_app_threads", "sidecar_app_open_fds",
    "process_resident_memory_bytes",
]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_the_default_config_is_alive_and_ready_and_stops_on_sigterm_with_0() -> None:
    with run_agent() as agent:
        for path in ("/livez", "/readyz", "/startupz", "/agent/livez", "/agent/readyz"):
            assert agent.get(path) == (200, "ok\n"), path
        assert agent.get("/readyz", method="HEAD")[0] == 200
        agent.signal(signal.SIGTERM)
        agent.wait_status("/readyz", 503, "[-]shutdown failed: agent is draining")
        assert agent.get("/livez") == (200, "ok\n")
        assert agent.wait_exit() == 0
        messages = [r["message"] for r in agent.log_records()]
        assert messages[-6:] == [
            "received SIGTERM",
            "phase running -> draining: SIGTERM: readiness fails from now on",
            "shutdown started by SIGTERM: draining for 5s",
            "drain over; no app is configured, so no signal to relay",
            "phase draining -> stopped: the shutdown sequence is over",
            "agent stopped",
        ]


def test_a_second_sigint_skips_the_drain_and_the_agent_exits_0() -> None:
    with run_agent("shutdown: {drain_delay: 25s, grace_period: 60s}") as agent:
        agent.signal(signal.SIGINT)
        agent.wait_status("/readyz", 503)
        agent.signal(signal.SIGINT)
        assert agent.wait_exit(timeout=10) == 0
        assert "skipping the remaining shutdown waits" in [r["message"] for r in agent.log_records()]


def test_the_listen_address_comes_from_the_environment_when_no_flag_is_given() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "SIDECAR_AGENT_LISTEN": "127.0.0.1:0"})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.kill()
    proc.communicate(timeout=15)
    assert "serving probes on 127.0.0.1:" in line


def test_the_config_file_comes_from_the_environment_when_no_flag_is_given(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "c.yaml")
    with open(path, "w") as handle:
        handle.write("log: {format: text}\n")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "SIDECAR_AGENT_CONFIG": path})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.kill()
    proc.communicate(timeout=15)
    assert not line.startswith("{") and "serving probes on" in line


def test_an_http_check_flips_readiness_and_logs_once_per_transition(http_target) -> None:  # type: ignore[no-untyped-def]
    config = f"""
    checks:
      api: {{type: http, url: "{http_target.url}/healthz", interval: 100ms, timeout: 1s, failure_threshold: 2}}
    """
    with run_agent(textwrap.dedent(config)) as agent:
        agent.wait_status("/readyz", 200)
        http_target.status = 500
        agent.wait_status("/readyz", 503, f"[-]api failed: HTTP 500 from {http_target.url}/healthz (expected 200-399)")
        # It keeps running while failing, each run failing for the same reason, and readiness stays failed.
        failing = agent.wait_for(lambda: (lambda c: c if c["consecutive_failures"] >= 6 else None)(agent.status()["checks"]["api"]))
        assert (failing["state"], failing["last_result"]["result"]) == ("failing", "failure"), failing
        assert failing["reason"] == f"HTTP 500 from {http_target.url}/healthz (expected 200-399)", failing
        assert agent.get("/readyz")[0] == 503
        http_target.status = 204
        agent.wait_status("/readyz", 200)
        # /readyz can answer before the agent's log line about it has been read from its output: wait for it.
        agent.wait_for(lambda: len([r for r in agent.log_records() if r.get("check") == "api"]) >= 3)
        transitions = [r for r in agent.log_records() if r.get("check") == "api"]
        assert [r["state"] for r in transitions] == ["passing", "failing", "passing"]
        assert agent.get("/readyz/api") == (200, "ok\n")
        assert agent.get("/readyz/nope")[0] == 404
        assert agent.get("/livez/api")[0] == 404


def test_a_slow_http_check_times_out_but_probes_still_answer_at_once(http_target) -> None:  # type: ignore[no-untyped-def]
    http_target.delay = 3.0
    config = f"checks: {{api: {{type: http, url: '{http_target.url}/', interval: 1s, timeout: 200ms, failure_threshold: 1}}}}"
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 503, "api failed: timed out after 200ms")
        agent.wait_for(lambda: agent.status()["checks"]["api"]["last_result"] is not None)
        assert agent.status()["checks"]["api"]["last_result"]["result"] == "timeout"


def test_an_http_check_can_require_a_body_match(http_target) -> None:  # type: ignore[no-untyped-def]
    http_target.body = b'{"status": "degraded"}'
    config = f"checks: {{api: {{type: http, url: '{http_target.url}/', interval: 100ms, expect_body: 'status.: .ok', failure_threshold: 1}}}}"
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 503, "the body does not match")
        http_target.body = b'{"status": "ok"}'
        agent.wait_status("/readyz", 200)


def test_a_tcp_check_fails_with_connection_refused_when_the_listener_closes(listener) -> None:  # type: ignore[no-untyped-def]
    port = listener.getsockname()[1]
    config = f"checks: {{db: {{type: tcp, address: '127.0.0.1:{port}', interval: 100ms, failure_threshold: 1}}}}"
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 200)
        listener.close()
        agent.wait_status("/readyz", 503, f"[-]db failed: connection refused by 127.0.0.1:{port}")


def test_an_exec_check_passes_on_exit_0_and_reports_the_code_and_output(tmp_path) -> None:  # type: ignore[no-untyped-def]
    flag = tmp_path / "flag"
    script = f"import os, sys; print('flag missing'); sys.exit(0 if os.path.exists({str(flag)!r}) else 3)"
    config = f"checks: {{script: {{type: exec, command: ['{sys.executable}', '-c', \"{script}\"], interval: 200ms, failure_threshold: 1}}}}"
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 503, "[-]script failed: exit 3: flag missing")
        flag.write_text("")
        agent.wait_status("/readyz", 200)


def test_an_exec_check_is_killed_with_its_children_at_the_timeout() -> None:
    marker = f"exec-timeout-marker-{os.getpid()}"
    command = ["/bin/sh", "-c", f"sleep 60 & sleep 61; echo {marker}"]
    config = f"checks: {{slow: {{type: exec, command: {json.dumps(command)}, interval: 5s, timeout: 300ms, failure_threshold: 1}}}}"
    with run_agent(config) as agent:
        agent.wait_for(lambda: agent.status()["checks"]["slow"]["last_result"])
        result = agent.status()["checks"]["slow"]["last_result"]
        assert (result["result"], result["message"]) == ("timeout", "timed out after 300ms")
        import psutil

        def no_children() -> bool:
            return not psutil.Process(agent.proc.pid).children(recursive=True)
        agent.wait_for(no_children)


def test_a_file_check_fails_when_the_heartbeat_file_gets_old(tmp_path) -> None:  # type: ignore[no-untyped-def]
    beat = tmp_path / "beat"
    beat.write_text("")
    config = f"checks: {{beat: {{type: file, path: '{beat}', max_age: 30s, interval: 100ms, failure_threshold: 1}}}}"
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 200)
        os.utime(beat, (0, 1_000_000))
        agent.wait_status("/readyz", 503, "over max_age 30s")
        beat.unlink()
        agent.wait_status("/readyz?verbose", 503, "does not exist")


def test_a_heartbeat_check_passes_while_pushes_arrive_within_ttl() -> None:
    config = "checks: {worker: {type: heartbeat, ttl: 1s, interval: 100ms, failure_threshold: 1}}"
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 503, "no heartbeat received yet")
        assert agent.get("/heartbeat/worker", method="POST") == (200, "ok\n")
        agent.wait_status("/readyz", 200)
        agent.wait_status("/readyz", 503, "over ttl 1s")
        assert agent.get("/heartbeat/other", method="POST")[0] == 404
        assert agent.get("/heartbeat/worker")[0] == 405


def test_status_reports_every_check_and_the_phase(http_target) -> None:  # type: ignore[no-untyped-def]
    config = f"checks: {{api: {{type: http, url: '{http_target.url}/', interval: 100ms, probes: [readiness, startup]}}}}"
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 200)
        status = agent.status()
        assert status["phase"] == "running" and status["startup_passed"] is True
        assert status["probes"] == {"liveness": True, "readiness": True, "startup": True}
        api = status["checks"]["api"]
        assert api["state"] == "passing" and api["type"] == "http" and api["probes"] == ["readiness", "startup"]
        assert api["last_result"]["result"] == "success" and api["last_result"]["message"] == "HTTP 200"
        assert api["last_transition"].endswith("Z") and api["consecutive_successes"] >= 1


def test_metrics_carry_every_design_name_and_pass_promtool(http_target) -> None:  # type: ignore[no-untyped-def]
    config = f"""
    app: {{match: {{pidfile: /proc/self/nonexistent}}}}
    checks:
      api: {{type: http, url: "{http_target.url}/", interval: 100ms}}
    """
    with run_agent(textwrap.dedent(config)) as agent:
        agent.wait_status("/readyz", 200)
        agent.get("/livez")
        code, text = agent.get("/metrics")
        assert code == 200
        for name in ALL_METRICS[:9]:
            assert f"\n{name}" in text or f"# TYPE {name.removesuffix('_total')}" in text, name
        assert 'sidecar_check_up{check="api",type="http"} 1.0' in text
        assert 'sidecar_phase{phase="running"} 1.0' in text
        assert 'sidecar_probe_requests_total{code="200",probe="liveness"}' in text
        promtool = shutil.which("promtool")
        assert promtool, "promtool is installed by tools/test.py (Debian package prometheus)"
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr


def test_metrics_speak_openmetrics_when_asked() -> None:
    with run_agent() as agent:
        status, body = http_request(agent.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert status == 200 and body.endswith("# EOF\n")


def test_a_bad_config_exits_2_naming_the_key_without_a_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.yaml"
    path.write_text("checks:\n  db: {type: tcp, address: '127.0.0.1:1', interval: fast}\n")
    for command in (["run", "--config", str(path)], ["check-config", str(path)]):
        result = cli(*command)
        assert result.returncode == 2
        assert result.stderr == f"{path}: checks.db.interval: expected a duration like 2s, got 'fast'\n"


def test_a_missing_config_file_exits_2() -> None:
    result = cli("run", "--config", "/nonexistent/agent.yaml")
    assert result.returncode == 2 and "cannot read config /nonexistent/agent.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_listen_flag_exits_2() -> None:
    result = cli("run", "--listen", "nowhere")
    assert result.returncode == 2 and result.stderr.startswith("sidecar-agent: --listen: expected an address")


def test_a_port_in_use_exits_1_with_a_clear_line(listener) -> None:  # type: ignore[no-untyped-def]
    result = cli("run", "--listen", f"127.0.0.1:{listener.getsockname()[1]}")
    assert result.returncode == 1 and "cannot listen on 127.0.0.1" in result.stdout and "Traceback" not in result.stdout


def test_check_config_prints_the_normalised_config_with_secrets_redacted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text("checks:\n  api: {type: http, url: 'http://u:${PASS}@127.0.0.1:1/', interval: 2000ms}\n")
    result = cli("check-config", str(path), env={"PASS": "sw0rdfish"})
    assert result.returncode == 0
    assert "sw0rdfish" not in result.stdout + result.stderr
    assert "url: http://u:<redacted>@127.0.0.1:1/" in result.stdout and "interval: 2s" in result.stdout


def test_schema_prints_json() -> None:
    result = cli("schema")
    assert result.returncode == 0 and json.loads(result.stdout)["title"] == "sidecar-agent config"
