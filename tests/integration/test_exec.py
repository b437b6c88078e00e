"""exec mode with real children: exit codes, signal relay and forwarding, zombie reaping; and `wait`."""

from __future__ import annotations

import pathlib
import signal
import stat
import subprocess
import sys
import time

import psutil

from agent.testing import run_agent

APP = str(pathlib.Path(__file__).resolve().parents[1] / "apps" / "app.py")
FAST = "shutdown: {drain_delay: 300ms, stop_timeout: 5s}\n"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout)


def events(log: pathlib.Path) -> list[tuple[str, float]]:
    if not log.exists():
        return []
    return [(line.split()[0], float(line.split()[1])) for line in log.read_text().splitlines() if line]


def test_the_apps_exit_code_passes_through() -> None:
    with run_agent(FAST, args=("exec",), extra_args=["--", sys.executable, "-c", "import sys; sys.exit(7)"]) as agent:
        assert agent.wait_exit() == 7
        assert any(r["message"] == "the app exited with code 7" for r in agent.log_records())


def test_an_app_ended_by_a_signal_gives_128_plus_n() -> None:
    command = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGUSR2)"]
    with run_agent(FAST, args=("exec",), extra_args=["--", *command]) as agent:
        assert agent.wait_exit() == 128 + signal.SIGUSR2


def test_a_missing_command_exits_127_and_a_non_executable_one_126(tmp_path: pathlib.Path) -> None:
    missing = cli("exec", "--listen", "127.0.0.1:0", "--", "/no/such/command")
    assert missing.returncode == 127 and "cannot start the app: command not found: /no/such/command" in missing.stdout
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    denied = cli("exec", "--listen", "127.0.0.1:0", "--", str(script))
    assert denied.returncode == 126 and "command not executable" in denied.stdout
    assert "Traceback" not in missing.stdout + denied.stdout


def test_exec_without_a_command_is_a_usage_error() -> None:
    result = cli("exec", "--")
    assert result.returncode == 2 and "exec needs a command" in result.stderr


def test_sigterm_drains_before_the_child_gets_it_and_its_code_comes_back(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "app.log"
    with run_agent(FAST, args=("exec",), extra_args=["--", sys.executable, APP, "--log", str(log), "--on-term", "exit:0"]) as agent:
        agent.wait_for(lambda: events(log))
        triggered = time.monotonic()
        agent.signal(signal.SIGTERM)
        agent.wait_status("/readyz", 503, "draining")
        not_ready = time.monotonic()
        assert agent.wait_exit() == 0
        signalled = dict(events(log)).get("SIGTERM")
        assert signalled is not None and triggered < not_ready < signalled and signalled - triggered >= 0.3


def test_a_child_killed_at_stop_timeout_exits_137(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "app.log"
    config = "shutdown: {drain_delay: 100ms, stop_timeout: 500ms}\n"
    with run_agent(config, args=("exec",), extra_args=["--", sys.executable, APP, "--log", str(log), "--on-term", "ignore"]) as agent:
        agent.wait_for(lambda: events(log))
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit() == 128 + signal.SIGKILL


def test_other_signals_are_forwarded_to_the_child(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "app.log"
    with run_agent(FAST, args=("exec",), extra_args=["--", sys.executable, APP, "--log", str(log)]) as agent:
        agent.wait_for(lambda: events(log))
        agent.signal(signal.SIGUSR1)
        agent.wait_for(lambda: "SIGUSR1" in {e for e, _ in events(log)})
        agent.signal(signal.SIGWINCH)
        agent.wait_for(lambda: "SIGWINCH" in {e for e, _ in events(log)})
        assert agent.status()["phase"] == "running"


def test_sighup_reloads_the_agent_and_is_not_forwarded(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "app.log"
    with run_agent(FAST, args=("exec",), extra_args=["--", sys.executable, APP, "--log", str(log)]) as agent:
        agent.wait_for(lambda: events(log))
        agent.signal(signal.SIGHUP)
        agent.wait_for(lambda: any(r.get("reload") == "applied" for r in agent.log_records()))
        assert "SIGHUP" not in {e for e, _ in events(log)}


def test_an_orphaned_grandchild_is_reaped(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "app.log"
    with run_agent(FAST, args=("exec",), extra_args=["--", sys.executable, APP, "--log", str(log), "--orphan"]) as agent:
        orphan_file = pathlib.Path(str(log) + ".orphan")
        agent.wait_for(lambda: orphan_file.exists() and orphan_file.read_text().strip())
        orphan = int(orphan_file.read_text())

        def reaped() -> bool:
            try:
                psutil.Process(orphan)
                return False
            except psutil.NoSuchProcess:
                return True
        agent.wait_for(reaped, timeout=10)
        zombies = [p for p in psutil.Process(agent.proc.pid).children() if p.status() == psutil.STATUS_ZOMBIE]
        assert zombies == []


def test_a_job_child_ends_the_agent_with_its_code(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "app.log"
    config = "app: {exit_with_app: true}\nshutdown: {drain_delay: 20s, grace_period: 60s}\n"
    command = ["--", sys.executable, APP, "--log", str(log), "--exit-after", "0.5", "--exit-code", "3"]
    with run_agent(config, args=("exec",), extra_args=command) as agent:
        assert agent.wait_exit(timeout=15) == 3


def test_process_checks_watch_the_child_in_exec_mode(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "app.log"
    config = FAST + "checks: {app: {type: process, interval: 100ms, probes: [liveness, startup]}}\n"
    with run_agent(config, args=("exec",), extra_args=["--", sys.executable, APP, "--log", str(log)]) as agent:
        agent.wait_status("/startupz", 200)
        status = agent.status()
        assert status["mode"] == "exec" and status["app"]["pid"] == psutil.Process(agent.proc.pid).children()[0].pid


def test_wait_exits_0_once_ready_and_1_naming_what_fails(listener) -> None:  # type: ignore[no-untyped-def]
    port = listener.getsockname()[1]
    config = f"checks: {{db: {{type: tcp, address: '127.0.0.1:{port}', interval: 100ms, failure_threshold: 1}}}}\n"
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 200)
        ok = cli("wait", "--url", agent.url + "/readyz", "--timeout", "5s")
        assert ok.returncode == 0 and ok.stdout.startswith("ready")
        listener.close()
        agent.wait_status("/readyz", 503)
        failed = cli("wait", "--url", agent.url + "/readyz", "--timeout", "500ms")
        assert failed.returncode == 1
        assert "not ready after 0.5s (HTTP 503); still failing:" in failed.stderr
        assert f"[-]db failed: connection refused by 127.0.0.1:{port}" in failed.stderr


def test_wait_on_the_agents_address_alone_polls_its_readyz(listener) -> None:  # type: ignore[no-untyped-def]
    port = listener.getsockname()[1]
    config = f"checks: {{db: {{type: tcp, address: '127.0.0.1:{port}', interval: 100ms, failure_threshold: 1}}}}\n"
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 200)
        for url in (agent.url, agent.url + "/"):
            ok = cli("wait", "--url", url, "--timeout", "5s")
            assert ok.returncode == 0 and ok.stdout.strip() == f"ready: {agent.url}/readyz", ok
        listener.close()
        agent.wait_status("/readyz", 503)
        failed = cli("wait", "--url", agent.url, "--timeout", "500ms")
        assert failed.returncode == 1 and "(HTTP 503)" in failed.stderr and "[-]db failed" in failed.stderr, failed


def test_wait_says_when_the_agent_is_not_reachable(listener) -> None:  # type: ignore[no-untyped-def]
    port = listener.getsockname()[1]
    listener.close()
    result = cli("wait", "--url", f"http://127.0.0.1:{port}/readyz", "--timeout", "300ms")
    assert result.returncode == 1 and "agent not reachable" in result.stderr


def test_wait_refuses_a_bad_timeout() -> None:
    result = cli("wait", "--timeout", "soon")
    assert result.returncode == 2 and "--timeout: expected a duration" in result.stderr
