"""`app.match.other_containers`: in a pod's shared process namespace the agent finds the app's container by its first
process (parent pid 0, not the pause process, not the agent's own container) and, with exit_with_app, exits when it
finishes, so an injected Job below Kubernetes 1.29 completes.

The pod is made of real namespaces: `unshare --pid --mount-proc` holds the pod's PID namespace (its pid 1 is the
pause process) and every "container" enters it with its own mount namespace, as a container runtime does.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from agent.testing import run_agent

CONFIG = """\
log: {level: info, format: json}
app: {match: {other_containers: true}, exit_with_app: true}
checks:
  app-process: {type: process, interval: 200ms, probes: [liveness]}
shutdown: {drain_delay: 0s, relay_signal: false}
"""


def _child(pid: int, timeout: float = 20.0) -> psutil.Process:
    """The process that nsenter or unshare forked into the namespace (its own pid is outside)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(pid).children()
        if children:
            return children[0]
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} started nothing")


def ns_pid(process: psutil.Process) -> int:
    """A process's pid as its own (the pod's) PID namespace numbers it."""
    with open(f"/proc/{process.pid}/status", encoding="ascii") as handle:
        line = next(line for line in handle if line.startswith("NSpid:"))
    return int(line.split()[-1])


@contextmanager
def pod() -> Iterator[list[str]]:
    """A PID namespace whose pid 1 is a pause process; yields the prefix that starts a container in it."""
    pause = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sleep", "600"])
    try:
        init = _child(pause.pid)
        yield ["nsenter", "-t", str(init.pid), "-p", "-m", "--", "unshare", "-m", "--"]
    finally:
        with contextlib.suppress(AssertionError, psutil.Error):
            _child(pause.pid, 1).kill()  # the namespace's pid 1: the kernel kills everything in it
        pause.kill()
        pause.wait(10)


def test_the_agent_finds_the_app_container_and_exits_when_it_finishes(tmp_path: Path) -> None:
    done = tmp_path / "done"
    app_code = f"import os, time\nwhile not os.path.exists({str(done)!r}): time.sleep(0.05)\n"
    with pod() as container, run_agent(CONFIG, prefix=container) as agent:
        agent_process = _child(agent.proc.pid)
        # Something exec'd into the agent's own container first (a preStop hook): the oldest candidate, but not the app.
        exec_into_agent = subprocess.Popen(["nsenter", "-t", str(agent_process.pid), "-p", "-m", "sleep", "60"])
        app = subprocess.Popen([*container, sys.executable, "-c", app_code])
        try:
            app_pid = ns_pid(_child(app.pid))
            agent.wait_for(lambda: (agent.status().get("app") or {}).get("pid") == app_pid, timeout=30)
            assert agent.get("/livez")[0] == 200
            done.touch()
            assert app.wait(30) == 0
            assert agent.wait_exit(30) == 0, agent.logs()[-10:]
            assert any("the app exited" in line for line in agent.logs())
        finally:
            for proc in (exec_into_agent, app):
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
