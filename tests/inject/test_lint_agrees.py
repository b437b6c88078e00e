"""lint reads an injected pod (its config from SIDECAR_AGENT_CONFIG_YAML) and accepts the token-free shutdown hooks,
but still finds what breaks them."""

from __future__ import annotations

from typing import Any

import yaml

from agent.inject import Options, inject_template
from agent.lint import lint_objects

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: example.com/web:1
          ports: [{name: http, containerPort: 8080}]
          livenessProbe: {httpGet: {path: /healthz, port: http}}
          readinessProbe: {httpGet: {path: /ready, port: http}}
"""


def injected(version: tuple[int, int]) -> dict[str, Any]:
    doc = yaml.safe_load(DEPLOYMENT)
    outcome = inject_template(doc["spec"]["template"], Options(kubernetes_version=version), kind="Deployment")
    assert outcome.injected
    doc["spec"]["template"] = outcome.template
    return doc


def rules(doc: dict[str, Any]) -> set[tuple[str, str | None]]:
    return {(f.rule, f.container) for f in lint_objects([doc])}


def pod(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def agent(doc: dict[str, Any]) -> dict[str, Any]:
    spec = pod(doc)
    return next(c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == "sidecar-agent")


def test_every_mode_lints_clean() -> None:
    for version in ((1, 27), (1, 28), (1, 29), (1, 30), (1, 33)):
        assert rules(injected(version)) == set(), version


def test_lint_reads_the_config_from_the_agents_env() -> None:
    doc = injected((1, 33))
    env = agent(doc)["env"][-1]
    env["value"] = env["value"].replace("drain_delay: 5s", "drain_delay: 1s")
    assert ("drain-shorter-than-readiness", "web") in rules(doc)


def test_a_native_sidecar_without_its_own_hook_leaves_the_wait_untriggered() -> None:
    doc = injected((1, 29))
    assert pod(doc)["containers"][0]["lifecycle"]["preStop"]["httpGet"]["path"] == "/prestop/wait?check=web-liveness"
    del agent(doc)["lifecycle"]
    assert ("prestop-wrong-target", "web") in rules(doc)


def test_a_sleep_shorter_than_the_drain_is_found() -> None:
    doc = injected((1, 33))
    pod(doc)["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] = 2
    assert ("prestop-wrong-target", "web") in rules(doc)


def test_a_liveness_window_shorter_than_an_agent_restart_is_found() -> None:
    doc = injected((1, 28))
    pod(doc)["containers"][0]["livenessProbe"]["failureThreshold"] = 3
    assert ("liveness-window-too-short", "web") in rules(doc)
