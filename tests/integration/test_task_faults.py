"""No task fails in silence: a fault raised inside each owned task of a real agent process is logged with the task's
name, counted in sidecar_task_failures_total{task}, and ends the way docs/probes.md says (the exit code included).

The faults come from a check-type plug-in (tests/integration/fault_plugin.py) installed on PYTHONPATH as a
distribution, as a third party's would be: the agent has no test hook of its own.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from agent.runtime.tasks import TaskKind
from agent.testing import AgentProcess, run_agent

ROOT = pathlib.Path(__file__).resolve().parents[2]
# agent_with(task, extra config, app command): an agent whose `fault` check breaks that task.
AgentWith = Callable[..., AbstractContextManager[AgentProcess]]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A distribution whose entry point registers the `fault` check type; the repository root holds its module."""
    where = tmp_path_factory.mktemp("plugins")
    info = where / "agent_faults-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: agent-faults\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sidecar_agent.checks]\nfault = tests.integration.fault_plugin:TYPE\n")
    return os.pathsep.join([str(where), str(ROOT)])


def config(task: str, extra: str = "") -> str:
    return (f"checks:\n  fault: {{type: fault, task: {task}, probes: [], interval: 1s}}\n"
            "shutdown: {drain_delay: 0s, stop_timeout: 60s, grace_period: 90s}\n" + extra)


@pytest.fixture
def agent_with(plugin_path: str) -> AgentWith:
    def start(task: str, extra: str = "", app: tuple[str, ...] = ()) -> AbstractContextManager[AgentProcess]:
        """In exec mode when given the app's command."""
        return run_agent(config(task, extra), args=("exec",) if app else ("run",), env={"PYTHONPATH": plugin_path},
                         extra_args=("--", *app) if app else ())
    return start


def failures(agent: AgentProcess, kind: str) -> float:
    code, body = agent.get("/metrics")
    assert code == 200
    match = re.search(rf'^sidecar_task_failures_total{{task="{kind}"}} (\S+)$', body, re.MULTILINE)
    assert match, body
    return float(match.group(1))


def failed_line(agent: AgentProcess, name: str) -> dict[str, object]:
    """The error line of the task's failure, once it is logged."""
    def found() -> dict[str, object] | None:
        return next((r for r in agent.log_records() if r.get("task") == name and r["level"] == "error"), None)
    record: dict[str, object] = agent.wait_for(found, timeout=30)
    assert str(record["message"]).startswith(f"task {name} failed: InjectedFault: injected into the ")
    assert "Traceback" in str(record["message"])  # the traceback rides in the line, as one JSON string
    return record


def armed(agent: AgentProcess, task: str) -> None:
    """Wait until the fault check has broken TASK (at its first run)."""
    agent.wait_for(lambda: any(f"fault armed: {task}" in line for line in agent.logs()))


def others_zero(agent: AgentProcess, kind: str) -> None:
    assert [k.value for k in TaskKind if k.value != kind and failures(agent, k.value) != 0] == []


# An app that ignores SIGTERM (and says so): only the SIGKILL after the stop signal ends it. Each line is one write,
# which the pipe it shares with the agent keeps whole.
STUBBORN_APP = ("import os, signal, time\n"
                "signal.signal(signal.SIGTERM, lambda *a: os.write(1, b'app: SIGTERM ignored\\n'))\n"
                "os.write(1, b'app: started\\n')\n"
                "while True: time.sleep(1)\n")
SEQUENCE_ERROR = "internal error in the shutdown sequence (InjectedFault); see the agent's log"


def test_a_failing_shutdown_sequence_still_stops_the_app_ends_in_error_and_exits_1(agent_with: AgentWith) -> None:
    with agent_with("shutdown", app=(sys.executable, "-c", STUBBORN_APP)) as agent:
        armed(agent, "shutdown")
        agent.wait_for(lambda: any("app: started" in line for line in agent.logs()))  # its SIGTERM handler is in place
        answer: list[tuple[int, str]] = []
        held = threading.Thread(target=lambda: answer.append(agent.get("/prestop", timeout=90)))
        held.start()
        failed_line(agent, "shutdown")
        agent.wait_for(lambda: any("app: SIGTERM ignored" in line for line in agent.logs()), timeout=30)  # the stop signal went out anyway
        assert failures(agent, "shutdown") == 1
        others_zero(agent, "shutdown")
        report = agent.status()["shutdown"]
        assert report["error"] == SEQUENCE_ERROR, report  # the outcome (error) once the app is stopped: the answer
        agent.signal(signal.SIGINT)  # skip the rest of stop_timeout: the same path as reaching it
        held.join(60)
        assert answer == [(200, "shutdown: error\n")]
        assert agent.wait_exit(30) == 1
    assert any("after the internal error, sent SIGKILL to" in line for line in agent.lines)
    assert sum("app: SIGTERM ignored" in line for line in agent.lines) == 1


def test_a_sequence_that_fails_after_the_stop_signal_does_not_send_it_twice(agent_with: AgentWith) -> None:
    with agent_with("shutdown_late", app=(sys.executable, "-c", STUBBORN_APP)) as agent:
        armed(agent, "shutdown_late")
        agent.wait_for(lambda: any("app: started" in line for line in agent.logs()))
        answer: list[tuple[int, str]] = []
        held = threading.Thread(target=lambda: answer.append(agent.get("/prestop", timeout=90)))
        held.start()
        agent.wait_for(lambda: any("app: SIGTERM ignored" in line for line in agent.logs()), timeout=30)
        agent.signal(signal.SIGINT)  # the wait for the app ends: the sequence looks at what is left, and fails
        failed_line(agent, "shutdown")
        held.join(60)
        assert answer == [(200, "shutdown: error\n")]
        assert agent.wait_exit(30) == 1
    assert any("after the internal error, sent SIGKILL to" in line for line in agent.lines)
    assert sum("app: SIGTERM ignored" in line for line in agent.lines) == 1  # the stop signal, once


def test_a_poller_that_raises_is_logged_counted_and_restarted_and_the_agent_exits_0(agent_with: AgentWith) -> None:
    with agent_with("poller") as agent:
        failed_line(agent, "check:fault")
        agent.wait_for(lambda: failures(agent, "poller") >= 2, timeout=30)  # it died, was restarted, died again
        others_zero(agent, "poller")
        assert agent.stop_fast() == 0


@pytest.mark.parametrize(("kind", "name"), [("app_watcher", "app-watcher"), ("watchdog", "watchdog")])
def test_a_vital_task_that_raises_fails_agent_livez_and_the_agent_exits_1(agent_with: AgentWith, kind: str,
                                                                           name: str) -> None:
    with agent_with(kind, "app: {match: {name: no-such-app-here}}\n") as agent:
        failed_line(agent, name)
        assert failures(agent, kind) == 1
        others_zero(agent, kind)
        body = agent.wait_status("/agent/livez", 503)
        assert f"the {kind} task failed" in body
        assert agent.get("/readyz")[0] == 200  # the app's probes still answer from the cache
        assert agent.stop_fast() == 1


def test_a_reload_that_raises_is_answered_as_failed_and_the_agent_goes_on(agent_with: AgentWith) -> None:
    with agent_with("reload") as agent:
        armed(agent, "reload")
        code, body = agent.get("/admin/reload", method="POST")
        assert (code, body) == (422, "the reload failed with an internal error (InjectedFault); see the agent's log\n")
        failed_line(agent, "reload")
        agent.signal(signal.SIGHUP)  # the same task, started by the signal
        agent.wait_for(lambda: failures(agent, "reload") == 2)
        others_zero(agent, "reload")
        assert agent.get("/agent/livez")[0] == 200
        assert agent.stop_fast() == 0


def test_a_request_handler_that_raises_is_answered_500_and_the_agent_goes_on(agent_with: AgentWith) -> None:
    with agent_with("server") as agent:
        armed(agent, "server")
        assert agent.get("/status") == (500, "internal error; see the agent's log\n")
        failed_line(agent, "server:GET /status")
        assert failures(agent, "server") == 1
        others_zero(agent, "server")
        assert agent.get("/agent/livez")[0] == 200
        assert agent.stop_fast() == 0
