"""Building pod specs as plain mappings for the rule tests."""

from __future__ import annotations

from typing import Any

from agent.lint import Finding, lint_objects

PRESTOP_EXEC = {"preStop": {"exec": {"command": ["curl", "-fsS", "http://127.0.0.1:8686/prestop"]}}}


def agent(**fields: Any) -> dict[str, Any]:
    return {"name": "agent", "image": "ghcr.io/acme/sidecar-agent:1.0", **fields}


def app(**fields: Any) -> dict[str, Any]:
    """An app container that is clean beside the agent on its embedded default config."""
    body: dict[str, Any] = {
        "name": "app", "image": "example/app:1",
        "livenessProbe": {"httpGet": {"path": "/livez", "port": 8686}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8686}, "periodSeconds": 2, "failureThreshold": 2},
        "lifecycle": PRESTOP_EXEC,
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def pod(*containers: dict[str, Any], name: str = "p", kind: str = "Pod", **spec: Any) -> dict[str, Any]:
    """A workload of `kind` whose pod spec has these containers and fields."""
    pod_spec = {"containers": list(containers), **spec}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}
    template = {"template": {"spec": pod_spec}}
    if kind == "CronJob":
        return {"apiVersion": "batch/v1", "kind": kind, "metadata": {"name": name},
                "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": template}}}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": template}


def config_map(text: str, name: str = "agent-config", key: str = "agent.yaml", namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {key: text}}


def mounted(container: dict[str, Any], path: str = "/config/agent.yaml") -> dict[str, Any]:
    """The agent container reading its config from the ConfigMap volume `config` at `path`."""
    return {**container, "args": ["run", "--config", path],
            "volumeMounts": [{"name": "config", "mountPath": path.rsplit("/", 1)[0]}]}


CONFIG_VOLUME = [{"name": "config", "configMap": {"name": "agent-config"}}]


def rules(findings: list[Finding]) -> list[tuple[str, str | None]]:
    return sorted((f.rule, f.container) for f in findings)


def lint(*objects: dict[str, Any], agent_config: str | None = None) -> list[tuple[str, str | None]]:
    return rules(lint_objects(list(objects), agent_config))
