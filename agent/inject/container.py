"""The injected container and the kubelet's probes that ask it, with the timing that keeps detection short.

Detection, worst case, from the moment a check's state flips (docs/inject.md adds the check's own time):
- readiness: one kubelet period (2 s): failureThreshold 1 on a cached answer that costs nothing to ask;
- startup: one kubelet period (2 s) after the startup check passes;
- liveness: one period plus 6 more failures 2 s apart, 14 s: the window (12 s) must outlast an agent restart
  (lint's liveness-window-too-short: about 11.5 s), or an agent crash would restart the app too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from agent.config import CONFIG_TEXT_ENV
from agent.inject.settings import LISTEN_PORT
from agent.kube.facts import AGENT_RESTART_SECONDS, probe_values
from agent.probes import Probe

NAME = "sidecar-agent"
PORT_NAME = "sidecar-agent"
AGENT_USER = 65532  # the image's USER (Dockerfile): numeric, so runAsNonRoot can verify it
KUBELET_PERIOD = 2
LIVENESS_FAILURES = math.floor(AGENT_RESTART_SECONDS / KUBELET_PERIOD) + 2  # (7 - 1) x 2 s = 12 s > 11.5 s
# Time the app's startup probe allows beyond the app's own, for the agent to start and run its first checks.
STARTUP_MARGIN_SECONDS = 10
# The agent's resources. The limits bound it in every pod; its start costs about 0.6 CPU-seconds (imports), which
# the 500m limit lets pass in about 1.2 s. The requests are what it holds at rest (about 45 MiB resident).
LIMITS = {"cpu": "500m", "memory": "128Mi"}
REQUESTS = {"cpu": "20m", "memory": "64Mi"}


def _get(path: str) -> dict[str, Any]:
    return {"path": path, "port": LISTEN_PORT}


def liveness(check: str) -> dict[str, Any]:
    """The app container's liveness: its own check's answer, so another container's failure never restarts it."""
    return {"httpGet": _get(f"/{Probe.LIVENESS.path}/{check}"), "periodSeconds": KUBELET_PERIOD, "timeoutSeconds": 1,
            "failureThreshold": LIVENESS_FAILURES}


def readiness() -> dict[str, Any]:
    """The pod's readiness: every readiness check, the startup latch, and the drain."""
    return {"httpGet": _get(f"/{Probe.READINESS.path}"), "periodSeconds": KUBELET_PERIOD, "timeoutSeconds": 1,
            "failureThreshold": 1}


def startup(check: str, original: Mapping[str, Any]) -> dict[str, Any]:
    """The app container's startup: its own check, allowed as long as the original probe allowed, plus a margin."""
    value = probe_values(original)
    allowed = value["initialDelaySeconds"] + value["periodSeconds"] * value["failureThreshold"]
    return {"httpGet": _get(f"/{Probe.STARTUP.path}/{check}"), "periodSeconds": KUBELET_PERIOD, "timeoutSeconds": 1,
            "failureThreshold": math.ceil((allowed + STARTUP_MARGIN_SECONDS) / KUBELET_PERIOD)}


def resources(guaranteed: bool) -> dict[str, Any]:
    """The agent's requests and limits. In a Guaranteed pod its requests are its limits, as the class needs of every
    container (agent.kube.qos); elsewhere the requests are what it uses at rest."""
    return {"requests": dict(LIMITS if guaranteed else REQUESTS), "limits": dict(LIMITS)}


def agent_container(image: str, config_env: str, env: list[dict[str, Any]], *, native: bool,
                    pre_stop: dict[str, Any] | None, guaranteed: bool = False) -> dict[str, Any]:
    """The agent's container: restricted Pod Security profile, its own probes, the config in its env, resources that
    keep a Guaranteed pod Guaranteed."""
    container: dict[str, Any] = {"name": NAME, "image": image}
    if native:
        container["restartPolicy"] = "Always"
    container.update({
        "command": ["sidecar-agent"],
        "args": ["run"],
        "env": [*env, {"name": CONFIG_TEXT_ENV, "value": config_env}],
        "ports": [{"name": PORT_NAME, "containerPort": LISTEN_PORT, "protocol": "TCP"}],
        # A native sidecar's startup probe holds the app containers until the agent serves.
        "startupProbe": {"httpGet": _get("/agent/readyz"), "periodSeconds": 1, "failureThreshold": 30},
        "livenessProbe": {"httpGet": _get("/agent/livez"), "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": _get("/agent/readyz"), "periodSeconds": 10},
    })
    if pre_stop is not None:
        container["lifecycle"] = {"preStop": pre_stop}
    container.update({
        "resources": resources(guaranteed),
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": AGENT_USER, "runAsGroup": AGENT_USER,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
    return container
