"""Faults the agent must survive (issue 6), with real agent processes, real apps, signals and sockets.

The app stopped and continued; the app gone and its pid recycled by an unrelated process; the agent SIGKILLed and
restarted beside a running app; checks that hang (a child that never exits, a resolver that never answers); the
agent itself paused; thousands of check runs; config reloads (applied, refused, under probe load).

Not tested here: a poller that dies. Pollers only die of a bug in the engine or a check type, and there is no clean
way to cause one from outside the process; tests/integration/test_engine.py kills one in-process. Every test below
does assert that no poller died (`poller_restarts` stays 0) while it ran.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pathlib
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from agent.testing import AgentProcess, http_request, run_agent
from tests.servers import Target, accepting_port, free_port_below_ephemeral, own_address

ROOT = pathlib.Path(__file__).resolve().parents[2]
STAND_IN_APP = str(ROOT / "tests" / "apps" / "app.py")
NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


# --- helpers -----------------------------------------------------------------------------------------------

@dataclass
class App:
    """tests/apps/app.py: a process that records the signals it gets in its log file."""

    proc: subprocess.Popen[bytes]
    log: pathlib.Path
    marker: str

    def events(self) -> list[str]:
        return [line.split()[0] for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def apps(tmp_path: pathlib.Path) -> Iterator[list[App]]:
    started: list[App] = []
    yield started
    for app in started:
        app.stop()


def start_app(apps: list[App], folder: pathlib.Path, *, pid: int | None = None, name: str = "fault-app") -> App:
    """Start the stand-in app (with exactly `pid`, when given: the kernel's next pid is set just before)."""
    marker = f"{name}-{os.getpid()}-{len(apps)}-{os.urandom(3).hex()}"
    log = folder / f"{marker}.log"
    command = [sys.executable, STAND_IN_APP, "--log", str(log), marker]
    proc = spawn_with_pid(command, pid) if pid is not None else subprocess.Popen(command)
    app = App(proc, log, marker)
    apps.append(app)
    deadline = time.monotonic() + 10
    while not any(e.startswith("started") for e in app.events()):
        assert time.monotonic() < deadline, "the app did not start"
        time.sleep(0.01)
    return app


@pytest.fixture
def accepting() -> Iterator[int]:
    with accepting_port() as port:
        yield port


def require_choosing_pids() -> None:
    """Fail, with the reason, unless this process may set the kernel's last pid (root; tools/test.py runs as root)."""
    try:
        with open(NS_LAST_PID, "r+"):
            return
    except OSError as error:
        pytest.fail(f"cannot write {NS_LAST_PID} to recycle a pid (needs root): {error}")


def spawn_with_pid(command: list[str], pid: int) -> subprocess.Popen[bytes]:
    """Start `command` as process `pid` (a recycled pid), by setting the kernel's last pid (root only; retried
    because other processes on the machine may take the pid first)."""
    for _ in range(200):
        with open(NS_LAST_PID, "w") as handle:
            handle.write(str(pid - 1))
        proc = subprocess.Popen(command)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    raise AssertionError(f"could not start a process as pid {pid}")


def poller_restarts(agent: AgentProcess) -> int:
    return int(agent.status()["agent"]["poller_restarts"])


def check(agent: AgentProcess, name: str) -> dict[str, object]:
    result: dict[str, object] = agent.status()["checks"][name]
    return result


def runs(agent: AgentProcess) -> dict[str, float]:
    """sidecar_check_runs_total by check, summed over results."""
    totals: dict[str, float] = {}
    for line in agent.get("/metrics")[1].splitlines():
        match = re.match(r'sidecar_check_runs_total\{check="([^"]+)",result="[a-z]+"\} (\S+)', line)
        if match:
            totals[match.group(1)] = totals.get(match.group(1), 0.0) + float(match.group(2))
    return totals


def metric(agent: AgentProcess, name: str) -> float:
    for line in agent.get("/metrics")[1].splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def config_path(agent: AgentProcess) -> pathlib.Path:
    args = list(agent.proc.args)  # type: ignore[arg-type]
    return pathlib.Path(args[args.index("--config") + 1])


# --- the app stopped, gone, replaced -----------------------------------------------------------------------

def test_a_stopped_app_fails_liveness_after_its_threshold_and_recovers_on_sigcont(apps: list[App], tmp_path: pathlib.Path) -> None:
    app = start_app(apps, tmp_path)
    config = (f"app: {{match: {{cmdline: '{app.marker}'}}}}\n"
              "checks: {proc: {type: process, interval: 100ms, failure_threshold: 3, probes: [liveness, startup]}}\n")
    with run_agent(config) as agent:
        agent.wait_status("/startupz", 200)
        app.proc.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        agent.wait_status("/livez", 503, f"[-]proc failed: pid {app.proc.pid} is stopped")
        assert time.monotonic() - stopped_at >= 0.2  # three failed runs 100 ms apart, not the first one
        assert check(agent, "proc")["consecutive_failures"] >= 3
        app.proc.send_signal(signal.SIGCONT)
        agent.wait_status("/livez", 200)
        assert agent.get("/agent/livez") == (200, "ok\n")
        assert (agent.status()["app"]["pid"], agent.status()["app"]["restarts"]) == (app.proc.pid, 0)
        assert poller_restarts(agent) == 0


def recycle(apps: list[App], folder: pathlib.Path, agent: AgentProcess, app: App) -> App:
    """End the app, then start an unrelated process (another command line) on the app's own pid."""
    pid = app.proc.pid
    app.stop()  # reaped, so the pid is free
    stranger = start_app(apps, folder, pid=pid, name="unrelated-process")
    assert stranger.proc.pid == pid and stranger.marker != app.marker
    return stranger


def shut_down_and_check_the_stranger_was_left_alone(agent: AgentProcess, stranger: App) -> None:
    agent.signal(signal.SIGTERM)  # drain_delay 100ms, and the app is gone: the sequence ends at once
    assert agent.wait_exit() == 0
    assert stranger.proc.poll() is None, "the agent ended an unrelated process"
    assert "SIGTERM" not in stranger.events(), "the agent signalled an unrelated process"
    outcome = [r for r in agent.log_records() if "outcome" in r or "the app" in r["message"]]
    assert not any(f"pid {stranger.proc.pid}" in r["message"] and "SIGTERM" in r["message"] for r in outcome)


def test_an_unrelated_process_on_the_apps_recycled_pid_is_not_the_app_with_a_cmdline_match(
        apps: list[App], tmp_path: pathlib.Path) -> None:
    require_choosing_pids()
    app = start_app(apps, tmp_path)
    config = (f"app: {{match: {{cmdline: '{app.marker}'}}}}\n"
              "checks: {proc: {type: process, interval: 100ms, failure_threshold: 1, probes: [liveness, startup]}}\n"
              "shutdown: {drain_delay: 100ms, stop_timeout: 2s}\n")
    with run_agent(config) as agent:
        agent.wait_status("/startupz", 200)
        assert agent.status()["app"]["pid"] == app.proc.pid
        stranger = recycle(apps, tmp_path, agent, app)
        agent.wait_status("/livez", 503, f"[-]proc failed: no process matches cmdline /{app.marker}/")
        time.sleep(0.5)
        status = agent.status()["app"]
        assert (status["found"], status["restarts"]) == (False, 0), status
        assert not any("was restarted" in r["message"] for r in agent.log_records())
        shut_down_and_check_the_stranger_was_left_alone(agent, stranger)


def test_an_unrelated_process_on_the_apps_recycled_pid_is_not_the_app_with_a_stale_pidfile(
        apps: list[App], tmp_path: pathlib.Path) -> None:
    require_choosing_pids()
    app = start_app(apps, tmp_path)
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{app.proc.pid}\n")  # written by the app after it started, as apps do
    config = (f"app: {{match: {{pidfile: '{pidfile}'}}}}\n"
              "checks: {proc: {type: process, interval: 100ms, failure_threshold: 1, probes: [liveness, startup]}}\n"
              "shutdown: {drain_delay: 100ms, stop_timeout: 2s}\n")
    with run_agent(config) as agent:
        agent.wait_status("/startupz", 200)
        time.sleep(2.0)  # process start times are known to about a second (the kernel's boot time is whole seconds)
        stranger = recycle(apps, tmp_path, agent, app)  # the app died without removing its pidfile
        assert os.stat(pidfile).st_mtime + 1.0 < psutil.Process(stranger.proc.pid).create_time()
        try:
            agent.wait_status("/livez", 503, "[-]proc failed:", timeout=5)
            status = agent.status()["app"]
            assert (status["found"], status["restarts"]) == (False, 0), status
        finally:
            shut_down_and_check_the_stranger_was_left_alone(agent, stranger)


# --- the agent killed and restarted beside a running app -------------------------------------------------

@dataclass
class Restart:
    livez_ok: float  # seconds from the agent's exec to the first /livez 200
    readyz_ok: float  # ... to the first /readyz 200
    answers: list[tuple[float, str, int]]


def watch_restart(config: pathlib.Path, port: int, log: pathlib.Path, bound: float = 30.0) -> tuple[subprocess.Popen[bytes], Restart]:
    """Start an agent on `port` and probe /livez and /readyz back to back (a new connection each) until both pass."""
    with open(log, "ab") as out:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT)
    answers: list[tuple[float, str, int]] = []
    first: dict[str, float] = {}
    try:
        while len(first) < 2 or time.monotonic() - started < first["/readyz"] + 0.5:
            assert time.monotonic() - started < bound, f"no correct answers within {bound}s: {answers[-4:]}"
            assert proc.poll() is None, log.read_text()
            for path in ("/livez", "/readyz"):
                try:
                    code, _ = http_request(f"http://127.0.0.1:{port}{path}", timeout=2)
                except OSError:
                    continue  # not listening yet
                at = time.monotonic() - started
                answers.append((at, path, code))
                if code == 200:
                    first.setdefault(path, at)
            time.sleep(0.002)
    except BaseException:
        proc.kill()  # the caller never gets it to stop
        proc.wait()
        raise
    return proc, Restart(first["/livez"], first["/readyz"], answers)


def test_the_agent_killed_and_restarted_rediscovers_the_app_and_answers_livez_then_readyz(
        apps: list[App], tmp_path: pathlib.Path, http_target: Target) -> None:
    app = start_app(apps, tmp_path)
    config = tmp_path / "agent.yaml"
    config.write_text(f"app: {{match: {{cmdline: '{app.marker}'}}}}\n"
                      "checks:\n"
                      "  proc: {type: process, interval: 1s, probes: [liveness, readiness, startup]}\n"
                      f"  web: {{type: http, url: '{http_target.url}/healthz', interval: 1s, probes: [readiness]}}\n")
    # Below the ephemeral range: probed back to back while nothing listens, a port in it could be picked as a
    # probe's own source port, and the probe would connect to itself and hold the port the agent restarts on.
    port = free_port_below_ephemeral()
    restarts: list[Restart] = []
    proc: subprocess.Popen[bytes] | None = None
    try:
        for round_ in range(4):  # a first start, then three SIGKILL restarts
            proc, restart = watch_restart(config, port, tmp_path / "agent.log")
            status = AgentProcess(proc, port).status()
            assert (status["app"]["pid"], status["app"]["restarts"]) == (app.proc.pid, 0), status["app"]
            if round_:
                restarts.append(restart)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = None
            assert app.proc.poll() is None and app.events() == [f"started:{app.proc.pid}"]  # the app noticed nothing
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    for restart in restarts:
        assert restart.livez_ok <= restart.readyz_ok, restart  # how long it takes: bench/bench_reliability.py
        # Never a wrong answer: liveness never fails while the agent finds its feet, and readiness, once it
        # passed, stays passing (the app and its dependency were healthy all along).
        assert all(code == 200 for _, path, code in restart.answers if path == "/livez"), restart.answers
        ready = [code for _, path, code in restart.answers if path == "/readyz"]
        assert ready[ready.index(200):] == [200] * len(ready[ready.index(200):]), ready
    print(f"\nrestart -> first /livez 200: {', '.join(f'{r.livez_ok * 1000:.0f}' for r in restarts)} ms; "
          f"-> first /readyz 200: {', '.join(f'{r.readyz_ok * 1000:.0f}' for r in restarts)} ms")


# --- checks that hang ------------------------------------------------------------------------------------

def sleepers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
    return found


def test_an_exec_check_that_never_exits_is_killed_at_its_timeout_and_the_others_keep_running(
        tmp_path: pathlib.Path, http_target: Target, accepting: int) -> None:
    marker = f"3600.{os.getpid()}{os.urandom(2).hex().translate(str.maketrans('abcdef', '123456'))}"
    present = tmp_path / "present"
    present.write_text("x")
    config = ("checks:\n"
              f"  hang: {{type: exec, command: [/bin/sh, -c, 'sleep {marker}'], interval: 100ms, timeout: 200ms, failure_threshold: 1, probes: []}}\n"
              f"  web: {{type: http, url: '{http_target.url}/', interval: 100ms}}\n"
              f"  port: {{type: tcp, address: '127.0.0.1:{accepting}', interval: 100ms}}\n"
              f"  file: {{type: file, path: '{present}', interval: 100ms, probes: [startup]}}\n")
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 200)
        agent.wait_for(lambda: runs(agent).get("hang", 0) >= 10)
        before = runs(agent)
        time.sleep(1.0)
        after = runs(agent)
        assert all(after[name] - before[name] >= 4 for name in ("web", "port", "file")), (before, after)
        hang = check(agent, "hang")
        assert hang["state"] == "failing" and hang["last_result"]["result"] == "timeout", hang  # type: ignore[index]
        assert len(sleepers(marker)) <= 2  # at most the run in flight (its sh and its sleep), none left behind
        assert agent.get("/readyz") == (200, "ok\n") and agent.get("/livez") == (200, "ok\n")
        assert agent.status()["agent"]["tasks"] < 20
        assert poller_restarts(agent) == 0
    deadline = time.monotonic() + 5
    while sleepers(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sleepers(marker), "an exec child outlived the agent"


def test_exec_checks_run_at_most_max_concurrent_exec_at_once_and_waiting_counts_against_the_timeout() -> None:
    checks = "".join(f"  e{i}: {{type: exec, command: [sleep, '0.5'], interval: 100ms, timeout: 700ms, probes: []}}\n"
                     for i in range(6))
    with run_agent(f"agent: {{max_concurrent_exec: 2}}\nchecks:\n{checks}") as agent:
        me = psutil.Process(agent.proc.pid)
        most, deadline = 0, time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                most = max(most, sum(1 for child in me.children() if child.status() != psutil.STATUS_ZOMBIE))
            time.sleep(0.01)
        outcomes = agent.get("/metrics")[1]
        assert most == 2, most
        timeouts = sum(float(m) for m in re.findall(r'sidecar_check_runs_total\{check="e\d",result="timeout"\} (\S+)', outcomes))
        successes = sum(float(m) for m in re.findall(r'sidecar_check_runs_total\{check="e\d",result="success"\} (\S+)', outcomes))
        assert timeouts >= 1 and successes >= 1, (timeouts, successes)  # a run that waited too long for a slot timed out
        assert agent.get("/agent/livez") == (200, "ok\n")


FLOOD = "yes aaaaaaaaaaaaaaa | head -c 20000000; echo the-last-line; exit 3"  # 20 MB of output, then the error


def flooded_message() -> str:
    config = (f"checks: {{flood: {{type: exec, command: [/bin/sh, -c, '{FLOOD}'], interval: 500ms, timeout: 10s, "
              "failure_threshold: 1}}\n")
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 503, "[-]flood failed: exit 3:")
        assert psutil.Process(agent.proc.pid).memory_info().rss < 200 * 2**20
        assert agent.get("/livez") == (200, "ok\n") and agent.get("/agent/livez") == (200, "ok\n")
        return str(check(agent, "flood")["last_result"]["message"])  # type: ignore[index]


def test_an_exec_check_that_floods_its_output_stays_small() -> None:
    message = flooded_message()
    assert message.startswith("exit 3: ") and len(message) <= 512, message[:100]


def test_an_exec_check_that_floods_its_output_shows_the_end_of_it() -> None:
    assert flooded_message().endswith("the-last-line")


@contextlib.contextmanager
def hung_resolver() -> Iterator[list[str]]:
    """A command prefix running the agent with a resolv.conf whose nameserver never answers (a private mount
    namespace; the machine's own files are untouched): getaddrinfo of an unknown name blocks its thread ~150 s."""
    from tests.integration.dns_server import private_mounts_work

    if not private_mounts_work():
        pytest.fail("cannot bind-mount over /etc/resolv.conf in a private mount namespace here (needs root and unshare)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent, tempfile.TemporaryDirectory() as folder:
        # Bound, so no ICMP unreachable comes back: queries just vanish. resolv.conf takes no port, so the
        # address is a random one of 127/8, which two test runs side by side do not share.
        address = f"127.77.{random.randrange(256)}.{random.randrange(1, 255)}"
        silent.bind((address, 53))
        hosts, resolv = os.path.join(folder, "hosts"), os.path.join(folder, "resolv.conf")
        pathlib.Path(hosts).write_text("127.0.0.1 localhost\n")
        pathlib.Path(resolv).write_text(f"nameserver {address}\noptions timeout:30 attempts:5\n")
        script = 'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
        yield ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, hosts, resolv]


@contextlib.contextmanager
def beside_a_hung_lookup(apps: list[App], tmp_path: pathlib.Path, dependency: str) -> Iterator[AgentProcess]:
    """The agent watching a stand-in app, with a process check, a file check and `dependency`, resolving through
    the hung resolver; started, and killed at the end (it would not exit before the lookup gives up)."""
    app = start_app(apps, tmp_path)
    present = tmp_path / "present"
    present.write_text("x")
    config = (f"app: {{match: {{cmdline: '{app.marker}'}}}}\n"
              "checks:\n"
              "  proc: {type: process, interval: 200ms, timeout: 1s, failure_threshold: 3, probes: [liveness, startup]}\n"
              f"  file: {{type: file, path: '{present}', interval: 200ms, timeout: 1s, failure_threshold: 3}}\n"
              f"  dep: {{{dependency}, interval: 200ms, timeout: 200ms}}\n")
    with hung_resolver() as prefix, run_agent(config, prefix=prefix) as agent:
        try:
            agent.wait_status("/startupz", 200)
            yield agent
        finally:
            kill_now(agent)


def assert_the_others_keep_running(agent: AgentProcess, seconds: float) -> None:
    """For `seconds`: the process and file checks keep passing (and running) and liveness keeps answering 200."""
    # Startup waits for the process check only: the file check's first result may still be on its way.
    agent.wait_for(lambda: all(agent.status()["checks"][name]["state"] == "passing" for name in ("proc", "file")))
    before = runs(agent)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = agent.status()["checks"]
        for name in ("proc", "file"):
            assert status[name]["state"] == "passing" and status[name]["last_result"]["result"] == "success", \
                (name, status[name])
        assert agent.get("/livez") == (200, "ok\n")
        time.sleep(0.2)
    after = runs(agent)
    assert after["proc"] - before["proc"] >= seconds * 2 and after["file"] - before["file"] >= seconds * 2, (before, after)


def test_a_dns_check_whose_lookup_hangs_forever_blocks_only_itself(apps: list[App], tmp_path: pathlib.Path) -> None:
    with beside_a_hung_lookup(apps, tmp_path, "type: dns, name: dep.hang.example") as agent:
        agent.wait_status("/readyz", 503, "[-]dep failed: timed out after 200ms")
        threads_before = len(os.listdir(f"/proc/{agent.proc.pid}/task"))
        assert_the_others_keep_running(agent, 6.0)
        assert len(os.listdir(f"/proc/{agent.proc.pid}/task")) <= threads_before + 1  # one lookup at a time
        assert agent.get("/agent/livez") == (200, "ok\n")
        assert poller_restarts(agent) == 0


def test_a_tcp_check_of_a_hostname_whose_lookup_hangs_blocks_only_itself(apps: list[App], tmp_path: pathlib.Path) -> None:
    with beside_a_hung_lookup(apps, tmp_path, "type: tcp, address: 'dep.hang.example:5432'") as agent:
        assert_the_others_keep_running(agent, 10.0)


def test_the_agent_exits_promptly_on_sigterm_while_a_lookup_hangs() -> None:
    config = "checks: {dep: {type: dns, name: dep.hang.example, interval: 200ms, timeout: 200ms}}\nshutdown: {drain_delay: 100ms}\n"
    with hung_resolver() as prefix, run_agent(config, prefix=prefix) as agent:
        agent.wait_status("/readyz", 503, "[-]dep failed: timed out after 200ms")
        agent.signal(signal.SIGTERM)
        try:
            agent.wait_for(lambda: "agent stopped" in "\n".join(agent.logs()), timeout=30)  # far below the ~150 s the hung lookup holds its thread
            assert agent.wait_exit(timeout=30) == 0
        finally:
            kill_now(agent)


def kill_now(agent: AgentProcess) -> None:
    if agent.proc.poll() is None:
        agent.proc.kill()
        agent.proc.wait()


# --- the agent itself paused -------------------------------------------------------------------------------

def send_probes_while_paused(port: int, paths: list[str]) -> tuple[list[threading.Thread], list[tuple[str, int, str]]]:
    answers: list[tuple[str, int, str]] = []

    def probe(path: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            answers.append((path, response.status, response.read().decode()))
        finally:
            conn.close()

    threads = [threading.Thread(target=probe, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    return threads, answers


def test_a_paused_agent_reports_its_own_lag_on_agent_livez_and_recovers(http_target: Target) -> None:
    config = f"checks: {{web: {{type: http, url: '{http_target.url}/', interval: 100ms, probes: [readiness]}}}}\n"
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 200)
        assert agent.get("/agent/livez") == (200, "ok\n")
        agent.signal(signal.SIGSTOP)
        try:
            time.sleep(3.0)
        finally:
            agent.signal(signal.SIGCONT)
        body = agent.wait_status("/agent/livez", 503, "the event loop lags")
        lag = float(re.search(r"lags ([0-9.]+)s", body).group(1))  # type: ignore[union-attr]
        assert 2.5 < lag < 10, body
        assert 2.5 < metric(agent, "sidecar_event_loop_lag_seconds") < 10
        agent.wait_status("/agent/livez", 200, timeout=10)  # the lag leaves the ~2 s window
        assert agent.status()["agent"]["event_loop_lag_seconds"] < 1.0
        agent.wait_status("/readyz", 200)


def test_a_paused_agent_does_not_fail_the_apps_liveness_when_it_resumes(http_target: Target) -> None:
    config = f"checks: {{web: {{type: http, url: '{http_target.url}/', interval: 100ms, timeout: 500ms, probes: [liveness, startup]}}}}\n"
    with run_agent(config) as agent:
        agent.wait_status("/startupz", 200)
        agent.signal(signal.SIGSTOP)
        try:
            http_target.delay = 1.0  # the first run after the pause takes a second: the answers below come first
            threads, answers = send_probes_while_paused(agent.port, ["/livez?verbose"] * 3)
            time.sleep(3.0)  # stale after 100ms + 500ms + 100ms
        finally:
            agent.signal(signal.SIGCONT)
        for thread in threads:
            thread.join(10)
        http_target.delay = 0.0
        assert len(answers) == 3
        assert all(code == 200 for _, code, _ in answers), answers


@pytest.mark.parametrize("round_", range(5))
def test_signals_all_through_shutdown_end_the_agent_with_0(round_: int) -> None:
    """SIGINT and SIGTERM keep arriving until the process is gone, also in its last moments: the exit code
    stays the agent's own (a gap with the default actions back in place once ended it with -2 or -15)."""
    with run_agent("shutdown: {drain_delay: 50ms}\n") as agent:
        agent.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while agent.proc.poll() is None and time.monotonic() < deadline:
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(agent.proc.pid, signum)
            time.sleep(0.0005)  # a steady stream, not a flood that fills the loop's wakeup pipe
        assert agent.wait_exit() == 0


# --- thousands of check runs -------------------------------------------------------------------------------

def sample(agent: AgentProcess, count: int = 8) -> tuple[list[int], list[int]]:
    fds, tasks = [], []
    for _ in range(count):
        own = agent.status()["agent"]
        fds.append(own["open_fds"])
        tasks.append(own["tasks"])
        time.sleep(0.05)
    return fds, tasks


def every_kind_of_check(marker: str, http_url: str, tcp_port: int, present: pathlib.Path | str,
                        every: str = "interval: 20ms, timeout: 1s") -> str:
    """A config running one check of every kind against real local peers (the machine's Redis and PostgreSQL)."""
    return (f"app: {{match: {{cmdline: '{marker}'}}}}\n"
            "checks:\n"
            f"  exec: {{type: exec, command: ['true'], {every}}}\n"
            f"  http: {{type: http, url: '{http_url}/', {every}}}\n"
            f"  tcp: {{type: tcp, address: '127.0.0.1:{tcp_port}', {every}}}\n"
            f"  redis: {{type: redis, url: 'redis://127.0.0.1:6379/0', reuse_connection: false, {every}}}\n"
            f"  postgres: {{type: postgres, dsn: 'postgres://postgres@127.0.0.1:5432/test', {every}}}\n"
            f"  file: {{type: file, path: '{present}', {every}}}\n"
            f"  proc: {{type: process, {every}, probes: [liveness]}}\n"
            f"  dns: {{type: dns, name: localhost, {every}}}\n")


def test_thousands_of_check_runs_keep_fds_and_tasks_steady(apps: list[App], tmp_path: pathlib.Path, http_target: Target,
                                                           accepting: int) -> None:
    app = start_app(apps, tmp_path)
    present = tmp_path / "present"
    present.write_text("x")
    # A generous timeout: a run that is slow on two loaded cores is no leak, and a timed-out run fails the test.
    config = every_kind_of_check(app.marker, http_target.url, accepting, present, every="interval: 20ms, timeout: 10s")
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 200)
        agent.wait_for(lambda: min(runs(agent).values()) >= 20)
        fds_before, tasks_before = sample(agent)
        start_runs, started = sum(runs(agent).values()), time.monotonic()
        agent.wait_for(lambda: sum(runs(agent).values()) - start_runs >= 4000, timeout=60, interval=0.5)
        took = time.monotonic() - started
        fds_after, tasks_after = sample(agent)
        total = sum(runs(agent).values()) - start_runs
        results = agent.get("/metrics")[1]
        failed = [line for line in results.splitlines() if line.startswith("sidecar_check_runs_total")
                  and 'result="success"' not in line and not line.endswith(" 0.0")]
        print(f"\n{total:.0f} runs in {took:.1f} s ({total / took:.0f}/s); fds {fds_before} -> {fds_after}; "
              f"tasks {tasks_before} -> {tasks_after}")
        assert not failed, failed
        # Samples catch runs in flight (up to one task and a few fds per check), so a single high sample means
        # nothing; a leak lifts the floor and the middle of the samples.
        assert min(fds_after) <= min(fds_before) + 3, (fds_before, fds_after)
        assert statistics.median(fds_after) <= statistics.median(fds_before) + 3, (fds_before, fds_after)
        assert min(tasks_after) <= min(tasks_before) + 2, (tasks_before, tasks_after)
        assert statistics.median(tasks_after) <= statistics.median(tasks_before) + 2, (tasks_before, tasks_after)
        assert agent.get("/readyz") == (200, "ok\n") and agent.get("/agent/livez") == (200, "ok\n")
        assert poller_restarts(agent) == 0
        assert statistics.median(fds_after) < 60


# --- config reloads ----------------------------------------------------------------------------------------

RELOAD_BASE = """\
checks:
  steady: {{type: tcp, address: '127.0.0.1:{port}', interval: 100ms, probes: [liveness, readiness]}}
  doomed: {{type: tcp, address: '127.0.0.1:{port}', interval: 100ms}}
  changing: {{type: exec, command: ['true'], interval: 100ms}}
"""
RELOAD_NEXT = """\
log: {{level: debug}}
agent: {{max_loop_lag: 3s}}
checks:
  steady: {{type: tcp, address: '127.0.0.1:{port}', interval: 100ms, probes: [liveness, readiness]}}
  changing: {{type: exec, command: ['true', 'changed'], interval: 100ms}}
  added: {{type: tcp, address: '127.0.0.1:{port}', interval: 100ms, probes: [startup]}}
"""


def reloads(agent: AgentProcess) -> tuple[int, int]:
    own = agent.status()["agent"]
    return int(own["config_reloads"]), int(own["config_reload_failures"])


def test_sighup_adds_removes_and_changes_checks_and_unchanged_ones_keep_their_state(accepting: int) -> None:
    port = accepting
    with run_agent(RELOAD_BASE.format(port=port)) as agent:
        agent.wait_status("/readyz", 200)
        agent.wait_for(lambda: check(agent, "steady")["consecutive_successes"] >= 5
                       and check(agent, "changing")["consecutive_successes"] >= 5)
        steady = check(agent, "steady")
        assert steady["transitions"] == 1
        config_path(agent).write_text(RELOAD_NEXT.format(port=port))
        agent.signal(signal.SIGHUP)
        agent.wait_for(lambda: reloads(agent) == (1, 0))
        status = agent.status()["checks"]
        assert sorted(status) == ["added", "changing", "steady"]
        kept = status["steady"]
        assert kept["consecutive_successes"] >= steady["consecutive_successes"], (steady, kept)
        assert (kept["transitions"], kept["last_transition"], kept["state"]) == (1, steady["last_transition"], "passing")
        assert status["changing"]["consecutive_successes"] < steady["consecutive_successes"]  # started fresh
        agent.wait_for(lambda: check(agent, "added")["state"] == "passing" and check(agent, "changing")["state"] == "passing")
        assert check(agent, "changing")["transitions"] == 1  # its own first transition, counted afresh
        applied = agent.wait_for(lambda: [r for r in agent.log_records() if r.get("reload") == "applied"])
        assert len(applied) == 1 and (applied[0]["added"], applied[0]["removed"], applied[0]["changed"]) == (
            ["added"], ["doomed"], ["changing"])
        assert "1 checks added, 1 removed, 1 changed, 1 kept" in applied[0]["message"]
        assert "agent changed: restart the agent to apply it" in applied[0]["message"]
        metrics = agent.get("/metrics")[1]
        assert "sidecar_config_reloads_total 1.0" in metrics and 'check="doomed"' not in metrics
        assert agent.get("/readyz") == (200, "ok\n") and agent.get("/livez") == (200, "ok\n")
        assert poller_restarts(agent) == 0


@pytest.mark.parametrize(("name", "bad", "problem"), [
    ("a YAML error", "checks: {steady: [unclosed\n", "line "),
    ("an unknown key", "checks:\n  steady: {type: tcp, address: '127.0.0.1:1', timeot: 1s}\n",
     "checks.steady.timeot: unknown key; did you mean 'timeout'?"),
])
def test_an_invalid_config_is_refused_and_the_old_checks_keep_running(accepting: int, name: str, bad: str,
                                                                      problem: str) -> None:
    port = accepting
    with run_agent(RELOAD_BASE.format(port=port)) as agent:
        agent.wait_status("/readyz", 200)
        config_path(agent).write_text(bad)
        before = check(agent, "steady")
        agent.signal(signal.SIGHUP)
        agent.wait_for(lambda: reloads(agent) == (0, 1))
        refused = agent.wait_for(lambda: [r for r in agent.log_records() if r.get("reload") == "refused"])
        assert len(refused) == 1 and refused[0]["level"] == "error" and problem in refused[0]["message"], refused
        assert "sidecar_config_reload_failures_total 1.0" in agent.get("/metrics")[1]
        agent.wait_for(lambda: check(agent, "steady")["consecutive_successes"] >= before["consecutive_successes"] + 5)
        assert sorted(agent.status()["checks"]) == ["changing", "doomed", "steady"]
        assert check(agent, "steady")["transitions"] == before["transitions"]
        assert agent.get("/readyz") == (200, "ok\n")
        assert agent.get("/agent/livez") == (200, "ok\n")


def test_post_admin_reload_from_loopback_answers_200_or_422(accepting: int) -> None:
    port = accepting
    with run_agent(RELOAD_BASE.format(port=port), listen="0.0.0.0:0") as agent:
        agent.wait_status("/readyz", 200)
        config_path(agent).write_text(RELOAD_NEXT.format(port=port))
        code, body = agent.get("/admin/reload", method="POST")
        assert (code, body) == (200, "config reloaded (POST /admin/reload): 1 checks added, 1 removed, 1 changed, 1 kept\n")
        config_path(agent).write_text("checks: {a: {type: tcp}}\nlisten: nowhere\n")
        code, body = agent.get("/admin/reload", method="POST")
        assert code == 422 and "checks.a.address: required key is missing" in body and "listen:" in body, body
        assert reloads(agent) == (1, 1)
        elsewhere = own_address()  # not loopback, no token configured: refused, nothing happens
        code, _ = http_request(f"http://{elsewhere}:{agent.port}/admin/reload", method="POST")
        assert code == 403
        assert reloads(agent) == (1, 1)
        assert sorted(agent.status()["checks"]) == ["added", "changing", "steady"]


def test_twenty_reloads_under_probe_load_never_answer_a_probe_wrongly(accepting: int) -> None:
    port = accepting
    variants = [
        RELOAD_BASE.format(port=port),
        RELOAD_BASE.format(port=port) + "  extra: {type: exec, command: ['true'], interval: 100ms, probes: []}\n"
        "log: {level: debug}\nshutdown: {drain_delay: 1s}\n",
    ]
    with run_agent(variants[0]) as agent:
        agent.wait_status("/readyz", 200)
        agent.wait_status("/startupz", 200)
        stop = threading.Event()
        wrong: list[tuple[str, int, str]] = []
        counts = [0]

        def hammer(path: str) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
            while not stop.is_set():
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read().decode()
                counts[0] += 1
                if response.status != 200:
                    wrong.append((path, response.status, body))
            conn.close()

        threads = [threading.Thread(target=hammer, args=(path,)) for path in ("/readyz", "/readyz", "/livez", "/startupz")]
        for thread in threads:
            thread.start()
        try:
            for index in range(20):
                config_path(agent).write_text(variants[(index + 1) % 2])
                if index % 2:
                    agent.signal(signal.SIGHUP)
                    agent.wait_for(lambda n=index: reloads(agent)[0] == n + 1)
                else:
                    code, body = agent.get("/admin/reload", method="POST")
                    assert code == 200, body
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        print(f"\n{counts[0]} probes during 20 reloads, {len(wrong)} wrong")
        assert reloads(agent) == (20, 0)
        assert not wrong, wrong[:5]
        assert counts[0] > 200
        steady = check(agent, "steady")
        assert steady["transitions"] == 1 and steady["state"] == "passing"
        assert poller_restarts(agent) == 0
