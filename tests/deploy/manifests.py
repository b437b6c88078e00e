"""Reading deploy/: the manifests, the pods in them, the agent's config and environment, PromQL metric names."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.units import parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
WEBHOOK = DEPLOY / "webhook"  # the admission webhook's own manifests: no agent inside
AGENT = "sidecar-agent"  # the agent's container name in every manifest
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
MARGIN = 5.0  # seconds of terminationGracePeriodSeconds beyond the agent's shutdown budget


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in manifest_files():
        for doc in documents(path):
            yield path, doc


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's port: a number, or the name of a port of the same container (as the kubelet resolves it)."""
    if isinstance(port, int):
        return port
    for entry in container.get("ports", []):
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def size_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (64Mi, 1Gi, 500M) in bytes."""
    return int(parse_size(str(quantity)))


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass
class Workload:
    """One pod template with the agent in it, and the other documents of its file (ConfigMap, Secret)."""

    path: Path
    doc: dict[str, Any]
    siblings: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return f"{self.path.name}:{self.doc['kind']}/{self.doc['metadata']['name']}"

    @property
    def template(self) -> dict[str, Any]:
        template: dict[str, Any] = self.doc["spec"]["template"]
        return template

    @property
    def pod(self) -> dict[str, Any]:
        pod: dict[str, Any] = self.template["spec"]
        return pod

    @property
    def native(self) -> bool:
        return any(c["name"] == AGENT for c in self.pod.get("initContainers", []))

    @property
    def agent(self) -> dict[str, Any]:
        for container in [*self.pod.get("initContainers", []), *self.pod["containers"]]:
            if container["name"] == AGENT:
                return container
        raise AssertionError(f"{self.name}: no container named {AGENT}")

    @property
    def apps(self) -> list[dict[str, Any]]:
        return [c for c in self.pod["containers"] if c["name"] != AGENT]

    def sibling(self, kind: str, name: str) -> dict[str, Any]:
        for doc in self.siblings:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        raise AssertionError(f"{self.name}: no {kind} named {name} in {self.path.name}")

    def config_location(self) -> tuple[str, str]:
        """(ConfigMap name, key) of the file the agent's --config (or $SIDECAR_AGENT_CONFIG) names."""
        args = [*self.agent.get("command", []), *self.agent.get("args", [])]
        path = args[args.index("--config") + 1] if "--config" in args else self.env().get("SIDECAR_AGENT_CONFIG")
        assert path, f"{self.name}: the agent is given no --config"
        for mount in self.agent.get("volumeMounts", []):
            prefix = mount["mountPath"].rstrip("/") + "/"
            if path.startswith(prefix):
                volume = next(v for v in self.pod["volumes"] if v["name"] == mount["name"])
                assert "configMap" in volume, f"{self.name}: {path} is not mounted from a ConfigMap"
                return volume["configMap"]["name"], mount.get("subPath") or path[len(prefix):]
        raise AssertionError(f"{self.name}: nothing is mounted where --config {path} points")

    def config_text(self) -> str:
        name, key = self.config_location()
        text: str = self.sibling("ConfigMap", name)["data"][key]
        return text

    def secret_value(self, name: str, key: str) -> str:
        secret = self.sibling("Secret", name)
        if key in secret.get("stringData", {}):
            return str(secret["stringData"][key])
        return base64.b64decode(secret["data"][key]).decode()

    def env(self) -> dict[str, str]:
        """The agent container's environment as the kubelet would set it (field references get a stand-in)."""
        out: dict[str, str] = {}
        for entry in self.agent.get("env", []):
            if "value" in entry:
                out[entry["name"]] = str(entry["value"])
                continue
            source = entry["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                out[entry["name"]] = self.secret_value(ref["name"], ref["key"])
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                out[entry["name"]] = str(self.sibling("ConfigMap", ref["name"])["data"][ref["key"]])
            else:
                out[entry["name"]] = "stand-in"
        return out

    def checked_config(self, tmp: Path) -> dict[str, Any]:
        """The config through `sidecar-agent check-config`, with the container's env: the normalised config."""
        path = tmp / f"{self.path.stem}-agent.yaml"
        path.write_text(self.config_text())
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_AGENT_")} | self.env()
        done = subprocess.run([sys.executable, "-m", "agent", "check-config", str(path)], capture_output=True, text=True,
                              timeout=60, env=env, cwd=ROOT)
        assert done.returncode == 0, f"{self.name}: check-config refused the ConfigMap's config:\n{done.stderr}"
        config: dict[str, Any] = yaml.safe_load(done.stdout)
        return config


def workloads() -> list[Workload]:
    """The example workloads that run the agent (deploy/kubernetes)."""
    found = []
    for path in manifest_files():
        if path.parent != KUBERNETES:
            continue
        docs = documents(path)
        for doc in docs:
            if doc.get("kind") in WORKLOAD_KINDS:
                found.append(Workload(path, doc, docs))
    return found


def listen_port(config: dict[str, Any]) -> int:
    return int(str(config["listen"]).rsplit(":", 1)[1])


def budget(config: dict[str, Any]) -> float:
    """The shutdown sequence's longest run, as the agent computes it."""
    shutdown = config["shutdown"]
    drain = parse_duration(shutdown["drain_delay"])
    if shutdown.get("drain_connections"):
        drain = max(drain, parse_duration(shutdown["drain_connections"]["timeout"]))
    return drain + (parse_duration(shutdown["stop_timeout"]) if shutdown["relay_signal"] else 0.0)


# -- PromQL --------------------------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
             "atan2", "inf", "nan"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_WORD = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (function names, keywords and labels left out)."""
    text = _RANGES.sub(" ", _MATCHERS.sub(" ", _STRINGS.sub('""', expr)))
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _WORD.finditer(text):
        word = match.group(0)
        if word.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def exposed_names(exposition: str) -> set[str]:
    """Every series name a /metrics answer offers to queries: its samples, and each declared family
    (a labelled counter with no child yet has a TYPE line and no sample), with a histogram's suffixes."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
