"""Apps behind a shell, in both modes: exactly one stop signal reaches the real app, nothing of its tree is left,
and the agent's log, /status and exit code say what happened."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil
import pytest

from agent.testing import AgentProcess, run_agent
from tests.servers import until

APP = str(pathlib.Path(__file__).resolve().parents[1] / "apps" / "app.py")
TERM = 128 + signal.SIGTERM


@dataclass
class Wrapped:
    """One way of starting the app: the argv, and the exit code exec mode gives when the app stops on SIGTERM."""

    argv: list[str]
    exec_code: int
    log: pathlib.Path
    marker: str

    def events(self) -> list[str]:
        return [line.split()[0] for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def app_pid(self) -> int | None:
        return next((int(e.split(":")[1]) for e in self.events() if e.startswith("started:")), None)


def script(folder: pathlib.Path, body: str) -> str:
    path = folder / "entrypoint.sh"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


# Each case: (how the app is started, exec mode's exit code when the app stops on SIGTERM). A shell that waits for
# the app dies of the group's SIGTERM itself (143); `exec` leaves the app as the child, whose own code is 0.
CASES: dict[str, Callable[[str, pathlib.Path], tuple[list[str], int]]] = {
    "sh -c": lambda app, d: (["/bin/sh", "-c", f"{app}; echo done"], TERM),
    "bash -c": lambda app, d: (["bash", "-c", f"{app}; echo done"], TERM),
    "script without exec": lambda app, d: ([script(d, f"{app}\necho done")], TERM),
    "script with exec": lambda app, d: ([script(d, f"exec {app}")], 0),
    "double wrapper": lambda app, d: (["/bin/sh", "-c", f"bash -c {shlex.quote(app + '; echo inner')}; echo outer"], TERM),
}


@pytest.fixture
def wrap(tmp_path: pathlib.Path) -> Iterator[Callable[..., Wrapped]]:
    made: list[Wrapped] = []

    def make(case: str, *app_args: str) -> Wrapped:
        marker = f"wrapped-app-{os.getpid()}-{len(made)}-{os.urandom(3).hex()}"
        log = tmp_path / f"{marker}.log"
        app = shlex.join([sys.executable, APP, "--log", str(log), *app_args, marker])
        argv, code = CASES[case](app, tmp_path)
        made.append(Wrapped(argv, code, log, marker))
        return made[-1]

    yield make
    for wrapped in made:  # whatever a failed test left behind
        pid = wrapped.app_pid()
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if wrapped.marker in process.cmdline():  # still this test's app, not a reused pid
                    process.kill()


def started(agent: AgentProcess, wrapped: Wrapped) -> int:
    pid: int = agent.wait_for(wrapped.app_pid)
    return pid


def tree_pids(agent: AgentProcess) -> set[int]:
    return {m["pid"] for m in (agent.status().get("app") or {}).get("tree", [])}


def gone(pid: int, started_at: float) -> bool:
    try:
        process = psutil.Process(pid)
        return process.create_time() != started_at or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


FAST = "shutdown: {drain_delay: 200ms, stop_timeout: 10s}\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_exec_mode_stops_the_app_behind_the_wrapper_with_one_signal(case: str, wrap: Callable[..., Wrapped]) -> None:
    wrapped = wrap(case)
    with run_agent(FAST, args=("exec",), extra_args=["--", *wrapped.argv]) as agent:
        pid = started(agent, wrapped)
        born = psutil.Process(pid).create_time()
        agent.wait_for(lambda: pid in tree_pids(agent))
        status = agent.status()["app"]
        child = psutil.Process(agent.proc.pid).children()[0].pid
        assert status["target"]["pid"] == child and {child, pid} <= tree_pids(agent)
        tree = [psutil.Process(p) for p in tree_pids(agent)]
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit() == wrapped.exec_code
    assert wrapped.events().count("SIGTERM") == 1 and "graceful" in wrapped.events()
    assert gone(pid, born) and not any(p.is_running() for p in tree)  # nothing of the tree is left
    said = agent.messages()
    assert not any("SIGKILL" in m for m in said), said
    assert any(m.startswith("the app exited ") for m in said)
    # The shell may die of the group's signal while the app still finishes: the log says so, not "the app exited".
    assert any(m.endswith((f"with code {wrapped.exec_code}", f"(exit code {wrapped.exec_code})")) for m in said)
    assert said.index(next(m for m in said if m.startswith("the app exited "))) > said.index(
        next(m for m in said if m.startswith("sent SIGTERM to the app's process group")))


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_mode_finds_the_app_behind_the_wrapper_and_stops_it_alone(case: str, wrap: Callable[..., Wrapped]) -> None:
    wrapped = wrap(case)
    outer = subprocess.Popen(wrapped.argv, start_new_session=True)
    config = (f"app: {{match: {{cmdline: '{wrapped.marker}'}}}}\n"
              "checks: {proc: {type: process, interval: 100ms, probes: [liveness]}}\n" + FAST)
    try:
        pid = 0
        with run_agent(config) as agent:
            pid = int(wrapped.app_pid() or 0) or agent.wait_for(wrapped.app_pid)
            born = psutil.Process(pid).create_time()
            agent.wait_for(lambda: (agent.status()["app"].get("target") or {}).get("pid") == pid)
            target = agent.status()["app"]["target"]
            if case.endswith(("-c", "wrapper")):  # a script's shell has no marker in its command line to match
                assert "runs it and does not pass a stop signal on" in target["reason"]
                assert any(m.startswith(f"the app is pid {pid} (") for m in agent.messages())
            agent.signal(signal.SIGTERM)
            assert agent.wait_exit() == 0
        assert wrapped.events().count("SIGTERM") == 1 and "graceful" in wrapped.events()
        assert gone(pid, born)
        said = agent.messages()
        # The test's own process group holds the shell: the agent signals the app alone, and says why.
        assert any(m.startswith(f"sent SIGTERM to the app (pid {pid} (") and "not its process group" in m for m in said)
        assert any(m.startswith("the app exited ") for m in said) and not any("SIGKILL" in m for m in said)
        assert outer.wait(10) == 0  # the wrapper goes on after the app and ends by itself
    finally:
        if outer.poll() is None:
            os.killpg(outer.pid, signal.SIGKILL)
        outer.wait()


def test_run_mode_signals_the_apps_own_group_when_it_is_another_containers(wrap: Callable[..., Wrapped]) -> None:
    wrapped = wrap("sh -c")
    # unshare gives the shell and the app their own mount namespace, as another container of the pod has.
    outer = subprocess.Popen(["unshare", "--mount", *wrapped.argv], start_new_session=True)
    config = f"app: {{match: {{cmdline: '{wrapped.marker}'}}}}\n" + FAST
    try:
        with run_agent(config) as agent:
            pid = agent.wait_for(wrapped.app_pid)
            agent.wait_for(lambda: (agent.status()["app"].get("target") or {}).get("pid") == pid)
            agent.wait_for(lambda: pid in tree_pids(agent))
            agent.signal(signal.SIGTERM)
            assert agent.wait_exit() == 0
        assert wrapped.events().count("SIGTERM") == 1 and "graceful" in wrapped.events()
        assert outer.wait(10) == -signal.SIGTERM  # the shell got the group's signal too
        said = agent.messages()
        assert any(m.startswith(f"sent SIGTERM to the app (pid {pid} (") and f"its process group {outer.pid} (2 processes)"
                   in m for m in said), said
    finally:
        if outer.poll() is None:
            os.killpg(outer.pid, signal.SIGKILL)
        outer.wait()


def test_exec_mode_sigkills_the_whole_tree_of_an_app_that_ignores_the_signal(wrap: Callable[..., Wrapped]) -> None:
    wrapped = wrap("double wrapper", "--on-term", "ignore")
    config = "shutdown: {drain_delay: 100ms, stop_timeout: 1s}\n"
    with run_agent(config, args=("exec",), extra_args=["--", *wrapped.argv]) as agent:
        pid = started(agent, wrapped)
        born = psutil.Process(pid).create_time()
        agent.wait_for(lambda: pid in tree_pids(agent) and len(tree_pids(agent)) == 3)  # sh, bash, python
        tree = [psutil.Process(p) for p in tree_pids(agent)]
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit() == TERM  # the outer shell's own end: SIGTERM
    assert wrapped.events().count("SIGTERM") == 1 and "graceful" not in wrapped.events()
    assert gone(pid, born) and not any(p.is_running() for p in tree)
    said = agent.messages()
    killing = [m for m in said if "sending SIGKILL to" in m]
    assert len(killing) == 1 and f"pid {pid} (" in killing[0].split("sending SIGKILL to")[1], said
    assert killing[0].startswith("the app did not exit within stop_timeout 1s: the app's shell pid ")
    assert not any(m.startswith("the app exited ") for m in said)


def test_run_mode_sigkills_what_is_left_of_the_group_at_stop_timeout(wrap: Callable[..., Wrapped]) -> None:
    wrapped = wrap("sh -c", "--on-term", "ignore")
    outer = subprocess.Popen(["unshare", "--mount", *wrapped.argv], start_new_session=True)
    config = f"app: {{match: {{cmdline: '{wrapped.marker}'}}}}\nshutdown: {{drain_delay: 100ms, stop_timeout: 1s}}\n"
    try:
        with run_agent(config) as agent:
            pid = agent.wait_for(wrapped.app_pid)
            agent.wait_for(lambda: (agent.status()["app"].get("target") or {}).get("pid") == pid)
            assert agent.get("/prestop", timeout=30) == (200, "shutdown: killed\n")  # the outcome SIGKILL gives
            assert agent.wait_exit() == 0
        assert outer.wait(10) == -signal.SIGTERM
        assert wrapped.events().count("SIGTERM") == 1
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        said = agent.messages()
        assert any(m.startswith(f"the app did not exit within stop_timeout 1s: pid {pid} (") and
                   f"still runs; sending SIGKILL to pid {pid} (" in m for m in said), said
    finally:
        if outer.poll() is None:
            os.killpg(outer.pid, signal.SIGKILL)
        outer.wait()


def test_a_shell_that_exits_alone_is_never_called_the_app_exiting(wrap: Callable[..., Wrapped]) -> None:
    wrapped = wrap("sh -c")
    shell_marker = f"shell-only-{os.urandom(3).hex()}"
    outer = subprocess.Popen([*wrapped.argv, shell_marker], start_new_session=True)  # $0: only the shell matches
    config = (f"app: {{match: {{cmdline: '{shell_marker}'}}}}\n"
              "shutdown: {drain_delay: 100ms, stop_timeout: 1s, stop_scope: process}\n")
    try:
        with run_agent(config) as agent:
            pid = agent.wait_for(wrapped.app_pid)
            agent.wait_for(lambda: pid in tree_pids(agent))
            assert agent.status()["app"]["target"]["pid"] == outer.pid
            agent.signal(signal.SIGTERM)
            assert agent.wait_exit() == 0
        assert outer.wait(10) == -signal.SIGTERM
        said = agent.messages()
        assert not any(m.startswith("the app exited ") for m in said), said
        assert any(m.startswith(f"the app did not exit within stop_timeout 1s: the app's shell pid {outer.pid} (sh) "
                                f"exited but pid {pid} (") for m in said), said
        assert "SIGTERM" not in wrapped.events()  # stop_scope process: the shell alone got the signal
    finally:
        if outer.poll() is None:
            os.killpg(outer.pid, signal.SIGKILL)
        outer.wait()


def test_exec_mode_stops_what_the_app_left_behind_when_it_exits_by_itself(tmp_path: pathlib.Path,
                                                                         wrap: Callable[..., Wrapped]) -> None:
    wrapped = wrap("sh -c")
    # The shell starts the app in the background and exits: the app is orphaned and adopted by the agent.
    command = ["/bin/sh", "-c", wrapped.argv[2].replace("; echo done", " &") + " sleep 0.5; exit 3"]
    config = "shutdown: {drain_delay: 100ms, stop_timeout: 10s}\n"
    with run_agent(config, args=("exec",), extra_args=["--", *command]) as agent:
        pid = started(agent, wrapped)
        assert agent.wait_exit() == 3
    assert wrapped.events().count("SIGTERM") == 1 and "graceful" in wrapped.events()
    said = agent.messages()
    assert any(m.startswith(f"the app has exited but pid {pid} (") and "sent SIGTERM to" in m for m in said), said
    assert "the app's remaining processes have exited" in said


def test_the_agents_own_exec_check_is_never_the_app(wrap: Callable[..., Wrapped]) -> None:
    wrapped = wrap("script with exec")
    config = (f"app: {{match: {{cmdline: '{wrapped.marker}'}}}}\n"
              f"checks: {{busy: {{type: exec, command: [/bin/sh, -c, 'sleep 30', {wrapped.marker}], interval: 100ms, "
              "timeout: 20s, probes: []}}\n" + FAST)
    with run_agent(config) as agent:
        agent.wait_for(lambda: any(p.cmdline()[-1:] == [wrapped.marker]
                                   for p in psutil.Process(agent.proc.pid).children(recursive=True)))
        app = subprocess.Popen(wrapped.argv, start_new_session=True)  # younger than the check's command
        try:
            pid = agent.wait_for(wrapped.app_pid)
            agent.wait_for(lambda: (agent.status()["app"].get("target") or {}).get("pid") == pid)
            assert agent.status()["app"]["target"]["reason"] is None
        finally:
            app.kill()
            app.wait()


def test_unrelated_matches_are_named_with_the_choice(wrap: Callable[..., Wrapped]) -> None:
    first, second = wrap("bash -c"), wrap("bash -c")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for wrapped in (first, second):  # one after the other: the first is the older
            procs.append(subprocess.Popen(wrapped.argv, start_new_session=True))
            until(wrapped.app_pid)
        older, younger = first.app_pid(), second.app_pid()
        with run_agent(f"app: {{match: {{cmdline: '{first.marker}|{second.marker}'}}}}\n" + FAST) as agent:
            agent.wait_for(lambda: (agent.status()["app"].get("target") or {}).get("pid") == older)
            reason = agent.status()["app"]["target"]["reason"]
            assert "runs it and does not pass a stop signal on" in reason
            assert f"2 unrelated processes match; the oldest is watched, not pid {procs[1].pid} (bash)" in reason
            assert any(m.startswith(f"the app is pid {older} (") and "2 unrelated processes match" in m
                       for m in agent.messages())
            assert younger != older
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_exec_mode_with_stop_scope_process_signals_the_child_alone_and_says_what_is_left(
        wrap: Callable[..., Wrapped]) -> None:
    wrapped = wrap("sh -c")
    config = "shutdown: {drain_delay: 100ms, stop_timeout: 1s, stop_scope: process}\n"
    with run_agent(config, args=("exec",), extra_args=["--", *wrapped.argv]) as agent:
        pid = started(agent, wrapped)
        born = psutil.Process(pid).create_time()
        agent.wait_for(lambda: pid in tree_pids(agent))
        shell = agent.status()["app"]["target"]["pid"]
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit() == TERM
    assert "SIGTERM" not in wrapped.events() and gone(pid, born)  # the shell alone got it; the app was SIGKILLed
    said = agent.messages()
    assert any(m.startswith(f"sent SIGTERM to the app (pid {shell} (sh))") for m in said), said
    assert any(m.startswith(f"the app's shell pid {shell} (sh) exited but pid {pid} (") for m in said), said
    assert any(m.startswith(f"the app did not exit within stop_timeout 1s: the app's shell pid {shell} (sh) exited "
                            f"but pid {pid} (") and f"; sending SIGKILL to pid {pid} (" in m for m in said), said
