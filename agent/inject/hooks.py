"""The secret-free shutdown mechanism, per sidecar mode and Kubernetes version, and what becomes of a user's preStop.

On deletion the kubelet runs every container's preStop hook at once, then sends each its SIGTERM; a native sidecar
(>= 1.29) waits for its SIGTERM until the app containers have exited (kuberuntime_container.go: killContainer runs
the hook, then waitForTurn). So:
- the agent learns of the stop at t=0: as a regular container from its own SIGTERM; as a native sidecar from its
  own exec preStop `sidecar-agent stop` (a POST to /quitquitquit on loopback: no token);
- the app's SIGTERM waits for the drain: a preStop `sleep` of drain_delay (>= 1.30, the sleep action on by
  default), else an httpGet of the agent's /prestop/wait, which triggers nothing (so needs no token) and returns
  once the drain is over.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.config import ShutdownConfig
from agent.inject.settings import LISTEN_PORT
from agent.kube import versions
from agent.kube.facts import DOWNWARD_ENV, SHELLS
from agent.lint.commands import sleeps_first

# The config's default drain_delay: readiness (2 s) seen failing, plus the endpoints' lag.
DRAIN_SECONDS = int(ShutdownConfig().drain_delay)
WAIT_PATH = "/prestop/wait"


def agent_pre_stop(native: bool) -> dict[str, Any] | None:
    """The agent container's hook: a native sidecar hears of the stop from it; a regular one from its SIGTERM."""
    return {"exec": {"command": ["sidecar-agent", "stop"]}} if native else None


def app_pre_stop(mode: versions.Mode, checks: Sequence[str], *, wait: bool) -> dict[str, Any]:
    """The app container's hook: hold its SIGTERM until the drain is over. `wait`: the drain's length is not known
    in advance (it follows the EndpointSlices), so the hook asks the agent rather than sleeping.

    The kubelet also runs it when it kills this one container for a failed liveness or startup probe: `?check=NAME`
    names the container's own checks (its probes ask /livez/NAME, /startupz/NAME), so that the agent answers such a
    hook at once rather than hold the restart (a `sleep` cannot tell, and holds it for the drain).
    """
    if mode is versions.Mode.NATIVE_SLEEP and not wait:
        return {"sleep": {"seconds": DRAIN_SECONDS}}
    query = "&".join(f"check={name}" for name in checks)  # check names are letters, digits, '.', '_', '-'
    return {"httpGet": {"path": WAIT_PATH + (f"?{query}" if query else ""), "port": LISTEN_PORT}}


def downward_env() -> list[dict[str, Any]]:
    """The downward API's pod identity, which the agent's EndpointSlice watch needs (shutdown.endpoints)."""
    return [{"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in DOWNWARD_ENV]


@dataclass(frozen=True)
class HookPlan:
    """What to do with a container's existing preStop hook: keep it, replace it, or give up on the workload."""

    hook: dict[str, Any] | None  # the hook to write (None: keep the one there)
    note: str | None = None
    refuse: str | None = None  # why the workload cannot be injected


def existing(hook: Mapping[str, Any]) -> HookPlan:
    """A user's preStop hook: never dropped. A sleep covering the drain stays; a shorter one, or a shell script, is
    made to sleep through the drain first; any other hook cannot be combined with the drain, so no injection."""
    if isinstance(hook.get("sleep"), Mapping):
        seconds = hook["sleep"].get("seconds")
        if isinstance(seconds, int) and seconds >= DRAIN_SECONDS:
            return HookPlan(None, f"its preStop sleep of {seconds}s already covers the drain; kept")
        return HookPlan({**hook, "sleep": {**hook["sleep"], "seconds": DRAIN_SECONDS}},
                        f"its preStop sleep of {seconds}s is raised to the drain, {DRAIN_SECONDS}s")
    command = hook.get("exec", {}).get("command") if isinstance(hook.get("exec"), Mapping) else None
    if isinstance(command, list) and all(isinstance(w, str) for w in command):
        slept = sleeps_first(command)
        if slept is not None and slept >= DRAIN_SECONDS:
            return HookPlan(None, f"its preStop hook sleeps {slept}s first, which covers the drain; kept")
        if slept is not None and len(command) == 2:  # exactly `sleep N`
            return HookPlan({**hook, "exec": {**hook["exec"], "command": [command[0], str(DRAIN_SECONDS)]}},
                            f"its preStop sleep of {slept}s is raised to the drain, {DRAIN_SECONDS}s")
        if command and posixpath.basename(command[0]) in SHELLS:
            flag = next((i for i, w in enumerate(command[1:], 1) if w.startswith("-") and "c" in w[1:]), None)
            if flag is not None and flag + 1 < len(command):
                script = f"sleep {DRAIN_SECONDS}; {command[flag + 1]}"
                changed = [*command[:flag + 1], script, *command[flag + 2:]]
                return HookPlan({**hook, "exec": {**hook["exec"], "command": changed}},
                                f"its preStop script now sleeps {DRAIN_SECONDS}s (the drain) before it runs")
        shown = shlex.join(command)[:60]
        return HookPlan(None, refuse=f"its preStop hook runs `{shown}` without a shell, so the drain cannot be put "
                                     "before it; give it a shell (sh -c) or a sleep first, or remove it")
    kind = next((k for k in hook if hook.get(k) is not None), "an empty hook")
    return HookPlan(None, refuse=f"its preStop hook is {kind}, which cannot wait for the drain first; make it an exec "
                                 "hook with a shell, or remove it")
