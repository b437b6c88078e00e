"""What an injected pod needs of the agent: its config from SIDECAR_AGENT_CONFIG_YAML and `sidecar-agent stop` that
starts the ordered stop over loopback (`/prestop/wait`, which only waits: tests/integration/test_hooks.py)."""

from __future__ import annotations

import signal
import subprocess
import sys

from agent.testing import run_agent
from tests.children import replaced_env

CONFIG = ("log: {level: info, format: json}\n"
          "checks:\n  from-env: {type: tcp, address: '127.0.0.1:1', probes: [], interval: 1s}\n"
          "shutdown: {drain_delay: 1s, relay_signal: false}\n")


def test_run_reads_its_config_from_the_environment_when_no_file_is_named() -> None:
    with run_agent(None, env={"SIDECAR_AGENT_CONFIG_YAML": CONFIG}) as agent:
        assert list(agent.status()["checks"]) == ["from-env"]


def test_a_bad_config_in_the_environment_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-m", "agent", "run"], capture_output=True, text=True, timeout=60,
                          env=replaced_env({"SIDECAR_AGENT_CONFIG_YAML": "checks: {x: {type: tcp}}\n", "PATH": "/usr/bin:/bin"}))
    assert done.returncode == 2
    assert "SIDECAR_AGENT_CONFIG_YAML: checks.x.address" in done.stderr


def test_stop_starts_the_ordered_stop_on_loopback() -> None:
    with run_agent(None, env={"SIDECAR_AGENT_CONFIG_YAML": CONFIG}) as agent:
        done = subprocess.run([sys.executable, "-m", "agent", "stop"], capture_output=True, text=True, timeout=60,
                              env=replaced_env({"SIDECAR_AGENT_LISTEN": f"127.0.0.1:{agent.port}", "PATH": "/usr/bin:/bin"}))
        assert done.returncode == 0, done.stderr
        agent.wait_for(lambda: agent.status()["shutdown"]["waiting_for_sigterm_since"], 30)
        agent.signal(signal.SIGTERM)  # a native sidecar's turn: it serves until then
        assert agent.wait_exit(30) == 0
    refused = subprocess.run([sys.executable, "-m", "agent", "stop", "--url", f"http://127.0.0.1:{agent.port}/quitquitquit"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "not reachable" in refused.stderr
