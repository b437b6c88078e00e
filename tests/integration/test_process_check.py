"""The process check against real processes: stopped, zombie, gone, restarted, over a limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from agent.checks import CheckContext, CheckFailure, load_type
from agent.config import load
from agent.process.reaper import Reaper
from agent.testing import run_agent

SLEEPER = "import time, sys; time.sleep(600)"
ZOMBIE_PARENT = textwrap.dedent("""
    import os, sys, time
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    with open(sys.argv[1], "w") as f:
        f.write(str(pid))
    time.sleep(600)
""")


@pytest.fixture
def marker() -> str:
    return f"app-under-watch-{os.getpid()}-{os.urandom(3).hex()}"


@pytest.fixture
def apps() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start_app(apps: list[subprocess.Popen[bytes]], *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, *args])
    apps.append(proc)
    return proc


def config(match: str, probes: str = "[readiness]", limits: str = "") -> str:
    return textwrap.dedent(f"""
        app: {{match: {match}}}
        checks:
          app: {{type: process, probes: {probes}, interval: 100ms, failure_threshold: 1{limits}}}
    """)


def test_a_stopped_app_fails_liveness_and_recovers_on_sigcont(marker: str, apps: list) -> None:  # type: ignore[type-arg]
    app = start_app(apps, "-c", SLEEPER, marker)
    with run_agent(config(f"{{cmdline: '{marker}'}}", "[liveness, startup]")) as agent:
        agent.wait_status("/startupz", 200)
        assert agent.get("/livez") == (200, "ok\n")
        app.send_signal(signal.SIGSTOP)
        agent.wait_status("/livez", 503, f"[-]app failed: pid {app.pid} is stopped")
        app.send_signal(signal.SIGCONT)
        agent.wait_status("/livez", 200)
        assert agent.status()["app"]["pid"] == app.pid


def test_a_zombie_app_fails(tmp_path, apps: list) -> None:  # type: ignore[no-untyped-def,type-arg]
    pidfile = tmp_path / "app.pid"
    start_app(apps, "-c", ZOMBIE_PARENT, str(pidfile))
    with run_agent(config(f"{{pidfile: '{pidfile}'}}")) as agent:
        body = agent.wait_status("/readyz", 503, "is a zombie")
        assert f"[-]app failed: pid {pidfile.read_text()} is a zombie" in body


def test_a_gone_app_fails_and_a_new_one_counts_as_a_restart(marker: str, apps: list) -> None:  # type: ignore[type-arg]
    first = start_app(apps, "-c", SLEEPER, marker)
    with run_agent(config(f"{{cmdline: '{marker}'}}")) as agent:
        agent.wait_status("/readyz", 200)
        first.kill()
        first.wait()
        agent.wait_status("/readyz", 503, f"no process matches cmdline /{marker}/")
        second = start_app(apps, "-c", SLEEPER, marker)
        agent.wait_status("/readyz", 200)
        app = agent.status()["app"]
        assert (app["pid"], app["restarts"]) == (second.pid, 1)
        assert "sidecar_app_restarts_total 1.0" in agent.get("/metrics")[1]
        # The log is read from a pipe by a thread: the line can trail the answer the agent gave.
        agent.wait_for(lambda: any(
            r["message"] == f"the app was restarted: a process that had exited replaced by pid {second.pid}"
            for r in agent.log_records()))


def test_an_app_over_its_memory_limit_fails(marker: str, apps: list) -> None:  # type: ignore[type-arg]
    start_app(apps, "-c", SLEEPER, marker)
    with run_agent(config(f"{{cmdline: '{marker}'}}", limits=", max_rss: 1Mi")) as agent:
        agent.wait_status("/readyz", 503, "resident memory, over max_rss 1.0Mi")


def test_an_app_with_too_many_threads_fails(marker: str, apps: list) -> None:  # type: ignore[type-arg]
    threads = "import threading, time; [threading.Thread(target=time.sleep, args=(600,), daemon=True).start() for _ in range(8)]; time.sleep(600)"
    start_app(apps, "-c", threads, marker)
    with run_agent(config(f"{{cmdline: '{marker}'}}", limits=", max_threads: 4")) as agent:
        agent.wait_status("/readyz", 503, "threads, over max_threads 4")


def test_app_metrics_describe_the_watched_process(marker: str, apps: list) -> None:  # type: ignore[type-arg]
    start_app(apps, "-c", SLEEPER, marker)
    with run_agent(config(f"{{cmdline: '{marker}'}}")) as agent:
        agent.wait_status("/readyz", 200)
        names = ("sidecar_app_resident_memory_bytes", "sidecar_app_cpu_seconds_total", "sidecar_app_threads",
                 "sidecar_app_open_fds")

        def described() -> str | None:
            # The first sample may catch the app still starting, its CPU time not yet one clock tick:
            # the samples that follow carry what its start-up used.
            text = agent.get("/metrics")[1]
            values = [next(line for line in text.splitlines() if line.startswith(name + " ")) for name in names]
            return text if all(float(value.split()[1]) > 0 for value in values) else None

        assert "sidecar_app_up 1.0" in agent.wait_for(described)


async def test_a_process_check_without_an_app_to_watch_fails_with_the_reason() -> None:
    """A reload may add a process check to an agent started without app.match: it has no app monitor."""
    spec = load("checks: {app: {type: process}}\n", {}, app_is_child=True).checks[0]
    check = load_type(spec.type).create(spec, CheckContext(None, {}, time.monotonic, Reaper()))
    with pytest.raises(CheckFailure, match=r"no app to watch: a process check needs app\.match"):
        await check.run()
