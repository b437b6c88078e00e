"""A small real mutation standing in for agent.inject in the webhook's tests: adds a container and an annotation.

It follows inject's contract: a new template, never the argument changed; opt-out and an existing status
annotation leave the pod as it is; a bad checks annotation raises an error naming its key path.
"""

from __future__ import annotations

import copy
import pathlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OPT = "sidecar-agent.io/inject"
STATUS = "sidecar-agent.io/status"
CHECKS = "sidecar-agent.io/checks"
AGENT = {"name": "sidecar-agent", "image": "sidecar-agent:test", "restartPolicy": "Always",
         "ports": [{"name": "agent", "containerPort": 8686}]}
SLOW = "test.sidecar-agent.io/slow"  # "SECONDS:FILE": touch FILE, then take SECONDS (a review in flight)


class Refused(Exception):
    """Bad input in the pod: the webhook answers allowed: false with this message."""


@dataclass(frozen=True)
class Result:
    template: dict[str, Any]
    injected: bool
    notes: list[str] = field(default_factory=list)


def add_agent(template: Mapping[str, Any]) -> Result:
    """The agent as a native sidecar, the app's liveness probe moved to it, and the status annotation."""
    metadata = template.get("metadata") or {}
    labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
    if "false" in (labels.get(OPT), annotations.get(OPT)) or STATUS in annotations:
        return Result(copy.deepcopy(dict(template)), False)
    if SLOW in annotations:
        seconds, marker = annotations[SLOW].split(":", 1)
        pathlib.Path(marker).touch()
        time.sleep(float(seconds))
    checks = annotations.get(CHECKS)
    if checks is not None and not checks.lstrip().startswith("{"):
        raise Refused(f"metadata.annotations[{CHECKS}]: expected a YAML mapping of checks, got {checks[:40]!r}")
    new = copy.deepcopy(dict(template))
    new.setdefault("metadata", {}).setdefault("annotations", {})[STATUS] = '{"version":"test"}'
    spec = new.setdefault("spec", {})
    spec.setdefault("initContainers", []).append(copy.deepcopy(AGENT))
    notes = []
    for container in spec.get("containers", []):
        probe = container.get("livenessProbe")
        if probe and "httpGet" in probe:
            container["livenessProbe"] = {"httpGet": {"path": f"/livez/{container['name']}", "port": 8686},
                                          "periodSeconds": probe.get("periodSeconds", 10)}
        elif probe and "exec" in probe:
            notes.append(f"container {container['name']}: its exec liveness probe stays on the container")
    return Result(new, True, notes)
