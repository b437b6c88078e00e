"""The kubelet's preStop hooks against a real agent process: a pod deletion drains in every sidecar mode, a
container restart (a failed liveness or startup probe) is answered at once and stops nothing, and a native agent
serves on after its sequence until its own SIGTERM."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from agent.probes import HOOK_WINDOW
from agent.testing import AgentProcess, run_agent
from tests.children import replaced_env

GENEROUS = 30.0  # bounds for waits on a loaded machine, far above what any step takes
Alive = Callable[[str], pathlib.Path]  # the fixture below


@pytest.fixture
def alive(tmp_path: pathlib.Path) -> Alive:
    """Files whose presence makes a liveness check pass: `alive("web")` creates one and gives its path."""
    def make(name: str) -> pathlib.Path:
        path = tmp_path / name
        path.write_text("ok")
        return path
    return make


def config(web: pathlib.Path, other: pathlib.Path | None = None) -> str:
    """An injected pod's agent: each container's liveness its own check, no relay, a short drain."""
    checks = f"  web-liveness: {{type: file, path: '{web}', probes: [liveness], interval: 100ms, failure_threshold: 1}}\n"
    if other is not None:
        checks += (f"  other-liveness: {{type: file, path: '{other}', probes: [liveness], interval: 100ms, "
                   "failure_threshold: 1}\n")
    return ("log: {level: info, format: json}\nchecks:\n" + checks +
            "shutdown: {drain_delay: 1s, relay_signal: false, grace_period: 120s}\n")


class Hook:
    """One preStop hook call made as the kubelet makes it: in its own thread, answer kept."""

    def __init__(self, agent: AgentProcess, path: str, *, held: bool = False) -> None:
        """`held`: return once the agent holds the hook (so that it came first, before the stop's trigger)."""
        self.answer: tuple[int, str] | None = None
        self._thread = threading.Thread(target=self._call, args=(agent, path))
        self._thread.start()
        if held:
            agent.wait_for(lambda: agent.status()["prestop_hooks_held"] == 1, GENEROUS)

    def _call(self, agent: AgentProcess, path: str) -> None:
        self.answer = agent.get(path, timeout=GENEROUS * 4)

    def result(self) -> tuple[int, str]:
        self._thread.join(GENEROUS * 4)
        assert self.answer is not None, "the hook got no answer"
        return self.answer


def kubelet_probes(agent: AgentProcess, path: str, code: int) -> None:
    """Probe `path` as the kubelet does until it answers `code` (the agent remembers the last answer it gave)."""
    agent.wait_status(path, code, timeout=GENEROUS)


def ready_fails_while(agent: AgentProcess, hook: Hook) -> None:
    """Readiness answers 503 while the hook is still held: the drain is what holds it."""
    agent.wait_status("/readyz", 503, "agent is", timeout=GENEROUS)
    assert hook.answer is None, "the hook was held through the drain"


# -- a pod deletion drains, whatever starts the agent's stop ---------------------------------------------------


def test_a_deletion_drains_when_the_agent_hears_sigterm_beside_the_apps_hook(alive: Alive) -> None:
    with run_agent(config(alive("web"))) as agent:
        kubelet_probes(agent, "/livez/web-liveness", 200)
        hook = Hook(agent, "/prestop/wait?check=web-liveness", held=True)
        assert agent.status()["phase"] == "running", "the hook alone starts nothing"
        sent = time.monotonic()
        agent.signal(signal.SIGTERM)  # a regular sidecar: its SIGTERM comes with the app's hook, here just after
        ready_fails_while(agent, hook)
        code, body = hook.result()
        assert (code, body.split(" (")[0].strip()) == (200, "shutdown: not_relayed")
        assert "after this hook)" in body, body  # how far behind the hook the stop began
        assert time.monotonic() - sent >= 1.0, "it returns once the drain (1s) is over"
        assert agent.wait_exit(GENEROUS) == 0
        assert not any("container restart" in m for m in agent.messages())


def test_a_deletion_drains_when_the_apps_hook_calls_prestop(alive: Alive) -> None:
    with run_agent(config(alive("web"))) as agent:
        kubelet_probes(agent, "/livez", 200)
        hook = Hook(agent, "/prestop")  # from loopback here: an admin call
        ready_fails_while(agent, hook)
        assert hook.result() == (200, "shutdown: not_relayed\n")
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit(GENEROUS) == 0


def test_a_native_deletion_drains_and_the_agent_serves_on_until_its_own_sigterm(alive: Alive) -> None:
    with run_agent(config(alive("web"))) as agent:
        kubelet_probes(agent, "/livez/web-liveness", 200)
        hook = Hook(agent, "/prestop/wait?check=web-liveness", held=True)
        # The native agent's own preStop, as inject writes it, run beside the app's hook (here just after it).
        stop = subprocess.run([sys.executable, "-m", "agent", "stop"], capture_output=True, text=True,
                              timeout=GENEROUS * 2, env=replaced_env({"SIDECAR_AGENT_LISTEN": f"127.0.0.1:{agent.port}",
                                                                      "PATH": "/usr/bin:/bin"}))
        assert stop.returncode == 0, stop.stderr
        ready_fails_while(agent, hook)
        code, body = hook.result()
        assert (code, body.split(" (")[0].strip()) == (200, "shutdown: not_relayed")
        # The drain is over and the app would now stop: the agent waits for its turn, serving.
        agent.wait_for(lambda: any("until SIGTERM" in m and "still serving" in m for m in agent.messages()),
                       GENEROUS)
        status = agent.status()
        assert status["phase"] == "stopped"
        assert status["shutdown"]["exit"] == "on SIGTERM" and status["shutdown"]["waiting_for_sigterm_since"]
        assert agent.get("/readyz")[0] == 503
        code, metrics = agent.get("/metrics")
        assert code == 200 and 'sidecar_phase{phase="stopped"} 1.0' in metrics
        assert agent.proc.poll() is None
        agent.signal(signal.SIGTERM)  # the kubelet: the app containers have exited
        assert agent.wait_exit(GENEROUS) == 0
        assert any(m.startswith("received SIGTERM after waiting") for m in agent.messages())


def test_a_native_agent_signalled_during_its_drain_exits_without_waiting_it_out(alive: Alive) -> None:
    slow = config(alive("web")).replace("drain_delay: 1s", "drain_delay: 100s").replace("120s", "200s")
    with run_agent(slow) as agent:
        assert agent.get("/quitquitquit?exit=sigterm", method="POST")[0] == 200
        agent.wait_status("/readyz", 503, "agent is draining", timeout=GENEROUS)
        agent.signal(signal.SIGTERM)  # the app containers have exited: nothing is left to drain for
        assert agent.wait_exit(GENEROUS) == 0


# -- a container restart is not a pod stop ---------------------------------------------------------------------


@pytest.mark.parametrize(("hook", "probed"), [
    ("/prestop/wait?check=web-liveness", "/livez/web-liveness"),  # an injected pod: each container's own check
    ("/prestop", "/livez"),  # the README's pod: the app's liveness asks /livez
])
def test_a_liveness_kill_is_answered_at_once_and_the_agent_keeps_running(alive: Alive, hook: str, probed: str) -> None:
    web = alive("web")
    with run_agent(config(web)) as agent:
        kubelet_probes(agent, probed, 200)
        web.unlink()
        kubelet_probes(agent, probed, 503)  # the kubelet's last probe before it kills the app
        code, body = agent.get(hook, timeout=GENEROUS)
        assert code == 200
        assert body.startswith(f"container restart, not a pod stop: the last liveness answer on {probed} was 503, "
                               "and it still fails"), body
        status = agent.status()
        assert status["phase"] == "running" and status["shutdown"] is None
        assert status["container_restarts"]["count"] == 1
        assert status["container_restarts"]["last"]["hook"] == f"GET {hook.split('?')[0]}"
        assert agent.get("/readyz")[0] == 200
        assert any("a container restart, not a pod stop" in m for m in agent.messages())
        # The app is back before the kubelet probes again (its last answer is still 503): a deletion drains as always.
        web.write_text("ok")
        agent.wait_for(lambda: agent.status()["checks"]["web-liveness"]["state"] == "passing", GENEROUS)
        deletion = Hook(agent, "/prestop/wait?check=web-liveness", held=True)
        agent.signal(signal.SIGTERM)
        assert deletion.result()[1].startswith("shutdown: not_relayed")
        assert agent.wait_exit(GENEROUS) == 0


def test_only_the_answers_of_the_hooks_own_container_count(alive: Alive) -> None:
    web = alive("web")
    with run_agent(config(web, alive("other"))) as agent:
        web.unlink()
        kubelet_probes(agent, "/livez/web-liveness", 503)
        kubelet_probes(agent, "/livez/other-liveness", 200)
        # The other container's hook: its own liveness passes, so only the window can tell (nothing begins).
        code, body = agent.get("/prestop/wait?check=other-liveness", timeout=GENEROUS)
        assert (code, body) == (200, f"container restart, not a pod stop: no stop began within {HOOK_WINDOW:g}s; "
                                     "nothing to drain\n")
        code, body = agent.get("/prestop/wait?check=web-liveness", timeout=GENEROUS)
        assert "the last liveness answer on /livez/web-liveness was 503" in body
        assert agent.status()["container_restarts"]["count"] == 2


def test_a_restart_the_agent_cannot_see_holds_the_app_only_for_the_window(alive: Alive) -> None:
    """The app's liveness is not the agent's (an exec probe it left alone): the kubelet kills the app, its hook
    waits HOOK_WINDOW for a stop that does not come (not the grace period, 120 s here), then the kubelet's SIGTERM
    stops the app; the agent runs on."""
    with run_agent(config(alive("web"))) as agent:
        started = time.monotonic()
        code, body = agent.get("/prestop/wait", timeout=GENEROUS * 4)
        held = time.monotonic() - started
        assert (code, body) == (200, f"container restart, not a pod stop: no stop began within {HOOK_WINDOW:g}s; "
                                     "nothing to drain\n")
        # Before: held for the whole grace period (120 s here). Now the window, with room for a loaded machine.
        assert HOOK_WINDOW <= held < HOOK_WINDOW + GENEROUS, held  # the whole window, and not much more
        assert agent.status()["phase"] == "running"
