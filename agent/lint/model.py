"""Kubernetes objects as the rules see them: pods, containers, probes and hooks, with the API's defaults applied.

Built from plain mappings (as YAML gives them); a field of the wrong type is an InputError naming its line.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from agent.kube.facts import DEFAULT_GRACE_PERIOD, PROBE_DEFAULTS, probe_values
from agent.lint.findings import InputError
from agent.lint.source import Document, line_of
from agent.probes import NAMES as PROBE_NAMES

PROBE_HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")
HOOK_HANDLERS = ("httpGet", "tcpSocket", "exec", "sleep")
# Where each workload kind keeps its pod template.
POD_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


@dataclass(frozen=True)
class Handler:
    """A probe's or a hook's action: httpGet, tcpSocket, exec, grpc or sleep."""

    type: str
    port: int | str | None = None
    path: str = "/"
    host: str = ""
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    service: str = ""
    seconds: int | None = None  # a sleep action's
    all_types: tuple[str, ...] = ()  # every handler key present: the API server wants exactly one
    line: int | None = field(default=None, compare=False)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass(frozen=True)
class Probe:
    kind: str
    handler: Handler
    initial_delay: int
    period: int
    timeout: int
    success: int
    failure: int
    given: Mapping[str, int]  # the numeric fields as written, before defaults
    line: int | None


@dataclass(frozen=True)
class Mount:
    volume: str
    path: str
    sub_path: str = ""


@dataclass(frozen=True)
class Container:
    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    ports: tuple[tuple[str, int], ...] = ()  # (name or "", containerPort)
    probes: Mapping[str, Probe] = field(default_factory=dict)
    pre_stop: Handler | None = None
    env: Mapping[str, str | None] = field(default_factory=dict)  # None: set from a Secret, ConfigMap or field
    env_from: bool = False
    mounts: tuple[Mount, ...] = ()
    run_as_user: int | None = None
    caps_add: frozenset[str] = frozenset()
    caps_drop: frozenset[str] = frozenset()
    init: bool = False  # in initContainers
    sidecar: bool = False  # an init container with restartPolicy: Always (a native sidecar)
    line: int | None = None

    def resolve(self, port: int | str | None) -> int | None:
        """A probe's port as a number: a name resolves only against this container's own ports."""
        if isinstance(port, int):
            return port
        return next((number for name, number in self.ports if name and name == port), None)

    @property
    def numbers(self) -> frozenset[int]:
        return frozenset(number for _, number in self.ports)


@dataclass(frozen=True)
class VolumeSource:
    kind: str  # ConfigMap or Secret
    name: str
    items: tuple[tuple[str, str], ...] | None  # (key, path), or None for every key as a file


@dataclass(frozen=True)
class Pod:
    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()
    share_process_namespace: bool = False
    grace_period: int = DEFAULT_GRACE_PERIOD
    run_as_user: int | None = None
    volumes: Mapping[str, tuple[VolumeSource, ...]] = field(default_factory=dict)
    line: int | None = None
    grace_line: int | None = None  # terminationGracePeriodSeconds, when it is set

    @property
    def running(self) -> tuple[Container, ...]:
        """The containers that run beside each other: native sidecars and the regular containers."""
        return tuple(c for c in self.init_containers if c.sidecar) + self.containers

    def user_of(self, container: Container) -> int | None:
        return container.run_as_user if container.run_as_user is not None else self.run_as_user


@dataclass(frozen=True)
class Workload:
    kind: str
    name: str
    namespace: str | None
    file: str
    line: int | None
    pod: Pod

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class DataObject:
    """A ConfigMap or a Secret, whose keys may hold the agent's config."""

    kind: str
    name: str
    namespace: str | None
    data: Mapping[str, str]
    file: str
    line: int | None


class _Reader:
    """Typed access to one document's fields; a wrong type is an InputError with the field's path and line."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: Any, key: str, path: str, expected: str, got: Any) -> NoReturn:
        kind = "a mapping" if isinstance(got, Mapping) else "a list" if isinstance(got, list) else repr(got)
        raise InputError(self.file, line_of(node, key), f"{path}.{key}: expected {expected}, got {kind}")

    def mapping(self, node: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = node.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(node, key, path, "a mapping", value)
        return value

    def mappings(self, node: Mapping[str, Any], key: str, path: str) -> list[Mapping[str, Any]]:
        value = node.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            self.fail(node, key, path, "a list of mappings", value)
        return value

    def text(self, node: Mapping[str, Any], key: str, path: str, default: str = "") -> str:
        value = node.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.fail(node, key, path, "a string", value)
        return value

    def texts(self, node: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
        value = node.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(node, key, path, "a list of strings (quote numbers)", value)
        return tuple(value)

    def integer(self, node: Mapping[str, Any], key: str, path: str) -> int | None:
        value = node.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(node, key, path, "an integer", value)
        return value

    def flag(self, node: Mapping[str, Any], key: str, path: str) -> bool:
        value = node.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            self.fail(node, key, path, "true or false", value)
        return value

    def port(self, node: Mapping[str, Any], path: str) -> int | str | None:
        value = node.get("port")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, str))):
            self.fail(node, "port", path, "a port number or name", value)
        return value

    def handler(self, node: Mapping[str, Any], path: str, allowed: Sequence[str], line: int | None) -> Handler:
        present = tuple(k for k in allowed if node.get(k) is not None)
        if not present:
            return Handler("", all_types=(), line=line)
        kind = present[0]
        body = self.mapping(node, kind, path)
        where = f"{path}.{kind}"
        if kind == "httpGet":
            headers = tuple((self.text(h, "name", where), str(h.get("value", "")))
                            for h in self.mappings(body, "httpHeaders", where))
            return Handler(kind, port=self.port(body, where), path=self.text(body, "path", where, "/") or "/",
                           host=self.text(body, "host", where), scheme=self.text(body, "scheme", where, "HTTP").upper(),
                           headers=headers, all_types=present, line=line)
        if kind == "tcpSocket":
            return Handler(kind, port=self.port(body, where), host=self.text(body, "host", where), all_types=present,
                           line=line)
        if kind == "grpc":
            return Handler(kind, port=self.port(body, where), service=self.text(body, "service", where), all_types=present,
                           line=line)
        if kind == "exec":
            return Handler(kind, command=self.texts(body, "command", where), all_types=present, line=line)
        if kind == "sleep":
            return Handler(kind, seconds=self.integer(body, "seconds", where), all_types=present, line=line)
        return Handler(kind, all_types=present, line=line)

    def probe(self, kind: str, node: Mapping[str, Any], path: str, line: int | None) -> Probe:
        given = {}
        for key in PROBE_DEFAULTS:
            value = self.integer(node, key, path)
            if value is not None:
                given[key] = value
        values = probe_values(given)
        return Probe(kind, self.handler(node, path, PROBE_HANDLERS, line), values["initialDelaySeconds"],
                     values["periodSeconds"], values["timeoutSeconds"], values["successThreshold"],
                     values["failureThreshold"], given, line)

    def container(self, node: Mapping[str, Any], path: str, init: bool) -> Container:
        name = self.text(node, "name", path)
        ports = []
        for i, port in enumerate(self.mappings(node, "ports", path)):
            number = self.integer(port, "containerPort", f"{path}.ports[{i}]")
            if number is not None:
                ports.append((self.text(port, "name", f"{path}.ports[{i}]"), number))
        probes = {kind: self.probe(kind, self.mapping(node, f"{kind}Probe", path), f"{path}.{kind}Probe",
                                   line_of(node, f"{kind}Probe"))
                  for kind in PROBE_NAMES if node.get(f"{kind}Probe") is not None}
        lifecycle = self.mapping(node, "lifecycle", path)
        pre_stop = None
        if lifecycle.get("preStop") is not None:
            pre_stop = self.handler(self.mapping(lifecycle, "preStop", f"{path}.lifecycle"), f"{path}.lifecycle.preStop",
                                    HOOK_HANDLERS, line_of(lifecycle, "preStop"))
        env: dict[str, str | None] = {}
        for i, var in enumerate(self.mappings(node, "env", path)):
            value = var.get("value")
            env[self.text(var, "name", f"{path}.env[{i}]")] = None if value is None else str(value)
        mounts = tuple(Mount(self.text(m, "name", f"{path}.volumeMounts[{i}]"), self.text(m, "mountPath", path),
                             self.text(m, "subPath", path)) for i, m in enumerate(self.mappings(node, "volumeMounts", path)))
        security = self.mapping(node, "securityContext", path)
        caps = self.mapping(security, "capabilities", f"{path}.securityContext")
        return Container(
            name=name, image=self.text(node, "image", path), command=self.texts(node, "command", path),
            args=self.texts(node, "args", path), ports=tuple(ports), probes=probes, pre_stop=pre_stop, env=env,
            env_from=bool(node.get("envFrom")), mounts=mounts,
            run_as_user=self.integer(security, "runAsUser", f"{path}.securityContext"),
            caps_add=frozenset(_cap(c) for c in self.texts(caps, "add", f"{path}.securityContext.capabilities")),
            caps_drop=frozenset(_cap(c) for c in self.texts(caps, "drop", f"{path}.securityContext.capabilities")),
            init=init, sidecar=init and self.text(node, "restartPolicy", path) == "Always", line=line_of(node))

    def volume_sources(self, node: Mapping[str, Any], path: str) -> tuple[VolumeSource, ...]:
        def one(kind: str, body: Mapping[str, Any], where: str) -> VolumeSource:
            name = self.text(body, "secretName" if kind == "Secret" else "name", where)
            items = None
            if body.get("items") is not None:
                items = tuple((self.text(i, "key", where), self.text(i, "path", where))
                              for i in self.mappings(body, "items", where))
            return VolumeSource(kind, name, items)

        found = []
        for key, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
            if node.get(key) is not None:
                found.append(one(kind, self.mapping(node, key, path), f"{path}.{key}"))
        projected = self.mapping(node, "projected", path)
        for i, source in enumerate(self.mappings(projected, "sources", f"{path}.projected")):
            for key, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
                if source.get(key) is not None:
                    where = f"{path}.projected.sources[{i}]"
                    found.append(one(kind, self.mapping(source, key, where), f"{where}.{key}"))
        return tuple(found)

    def pod(self, node: Mapping[str, Any], path: str) -> Pod:
        containers = tuple(self.container(c, f"{path}.containers[{i}]", False)
                           for i, c in enumerate(self.mappings(node, "containers", path)))
        inits = tuple(self.container(c, f"{path}.initContainers[{i}]", True)
                      for i, c in enumerate(self.mappings(node, "initContainers", path)))
        security = self.mapping(node, "securityContext", path)
        grace = self.integer(node, "terminationGracePeriodSeconds", path)
        volumes = {self.text(v, "name", f"{path}.volumes[{i}]"): self.volume_sources(v, f"{path}.volumes[{i}]")
                   for i, v in enumerate(self.mappings(node, "volumes", path))}
        return Pod(containers=containers, init_containers=inits,
                   share_process_namespace=self.flag(node, "shareProcessNamespace", path),
                   grace_period=DEFAULT_GRACE_PERIOD if grace is None else grace,
                   run_as_user=self.integer(security, "runAsUser", f"{path}.securityContext"), volumes=volumes,
                   line=line_of(node), grace_line=line_of(node, "terminationGracePeriodSeconds") if grace is not None else None)


def _cap(name: str) -> str:
    upper = name.upper()
    return upper[4:] if upper.startswith("CAP_") else upper


def _data(reader: _Reader, body: Mapping[str, Any], kind: str) -> dict[str, str]:
    data: dict[str, str] = {}
    if kind == "Secret":
        for key, value in reader.mapping(body, "data", kind).items():
            try:
                data[key] = base64.b64decode(str(value), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                continue  # not text: cannot be the agent's config
        data.update({k: str(v) for k, v in reader.mapping(body, "stringData", kind).items()})
        return data
    data.update({k: str(v) for k, v in reader.mapping(body, "data", kind).items()})
    for key, value in reader.mapping(body, "binaryData", kind).items():
        try:
            data[key] = base64.b64decode(str(value), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
    return data


def parse_documents(documents: Sequence[Document]) -> tuple[list[Workload], list[DataObject]]:
    """The workloads (with their pod spec) and the ConfigMaps and Secrets among the documents; other kinds are ignored."""
    workloads: list[Workload] = []
    data: list[DataObject] = []
    pending = list(documents)
    while pending:
        doc = pending.pop(0)
        body = doc.body
        reader = _Reader(doc.file)
        kind = reader.text(body, "kind", "")
        if kind == "List" or (kind.endswith("List") and isinstance(body.get("items"), list)):
            items = reader.mappings(body, "items", kind)
            pending[:0] = [Document(doc.file, line_of(item) or doc.line, item) for item in items]
            continue
        meta = reader.mapping(body, "metadata", kind)
        name = reader.text(meta, "name", "metadata") or "(unnamed)"
        namespace = reader.text(meta, "namespace", "metadata") or None
        if kind in ("ConfigMap", "Secret"):
            data.append(DataObject(kind, name, namespace, _data(reader, body, kind), doc.file, doc.line))
        elif kind in POD_PATHS:
            node: Mapping[str, Any] = body
            path = ""
            for step in POD_PATHS[kind]:
                node = reader.mapping(node, step, path or kind)
                path = f"{path}.{step}" if path else step
            if not node.get("containers"):
                raise InputError(doc.file, line_of(node) or doc.line, f"{kind} {name}: {path}.containers is missing or empty")
            workloads.append(Workload(kind, name, namespace, doc.file, doc.line, reader.pod(node, path)))
    return workloads, data
