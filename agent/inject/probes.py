"""The app's own probes as agent checks: httpGet, tcpSocket, grpc and `grpc_health_probe` exec probes, with their timing.

Pure: a container's probe mapping in, a check body (the config's `checks` format) or the reason it stays as it was out.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.kube.facts import PROBE_DEFAULTS, probe_values
from agent.lint.commands import is_local, simple_commands

KINDS = {"livenessProbe": "liveness", "readinessProbe": "readiness", "startupProbe": "startup"}
GRPC_HEALTH_PROBE = "grpc_health_probe"
# grpc_health_probe flags that change nothing the agent's grpc check does differently (timeouts come from the probe).
GRPC_IGNORED_FLAGS = {"connect-timeout", "rpc-timeout", "user-agent", "v", "gzip", "alsologtostderr"}
# Where a check made from a probe asks: the kubelet asks the pod IP, IPv4 or IPv6, and the app may listen on either
# family or both. The agent's checks take `localhost` as both loopbacks, 127.0.0.1 then ::1, with no lookup (tcp_check).
HOST = "localhost"


@dataclass(frozen=True)
class Converted:
    """A probe as a check: its config body (type, address or url, probes, timing)."""

    body: dict[str, Any]


@dataclass(frozen=True)
class Kept:
    """A probe the agent cannot run for the kubelet, and why it stays as it was."""

    reason: str


def timing(probe: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The probe's own timing in the config's words: periodSeconds -> interval, and so on."""
    value = probe_values(probe)
    body: dict[str, Any] = {"probes": [kind], "interval": f"{value['periodSeconds']}s",
                            "timeout": f"{value['timeoutSeconds']}s"}
    if value["initialDelaySeconds"]:
        body["initial_delay"] = f"{value['initialDelaySeconds']}s"
    body["failure_threshold"] = value["failureThreshold"]
    body["success_threshold"] = value["successThreshold"]
    return body


def resolve_port(container: Mapping[str, Any], port: Any) -> int | None:
    """A probe's port as a number: a name resolves against the container's own ports, as the kubelet does."""
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    if isinstance(port, str):
        if port.isdigit():
            return int(port)
        for declared in container.get("ports") or ():
            if isinstance(declared, Mapping) and declared.get("name") == port:
                number = declared.get("containerPort")
                return number if isinstance(number, int) else None
    return None


def convert(container: Mapping[str, Any], key: str, probe: Mapping[str, Any]) -> Converted | Kept:
    """The check that does what the kubelet's probe `key` of `container` did, or why it cannot."""
    kind = KINDS[key]
    bad = [k for k in PROBE_DEFAULTS if probe.get(k) is not None and (isinstance(probe[k], bool) or not isinstance(probe[k], int)
                                                                or probe[k] < 0)]
    if bad:
        return Kept(f"its {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a whole number of seconds or times")
    handlers = [h for h in ("httpGet", "tcpSocket", "grpc", "exec") if probe.get(h) is not None]
    if len(handlers) != 1 or not isinstance(probe[handlers[0]], Mapping):
        return Kept("it does not have exactly one of httpGet, tcpSocket, grpc, exec")
    handler = handlers[0]
    action: Mapping[str, Any] = probe[handler]
    if handler == "exec":
        found = _grpc_health_probe(action.get("command"))
        if isinstance(found, str):
            return Kept(found)
        return Converted({"type": "grpc", **found, **timing(probe, kind)})
    if action.get("host"):
        return Kept(f"its host {action['host']!r} sends it away from this pod's loopback, where the agent checks")
    port = resolve_port(container, action.get("port"))
    if port is None:
        return Kept(f"its port {action.get('port')!r} is not declared by the container, so the kubelet cannot resolve it")
    if handler == "tcpSocket":
        return Converted({"type": "tcp", "address": f"{HOST}:{port}", **timing(probe, kind)})
    if handler == "grpc":
        body: dict[str, Any] = {"type": "grpc", "address": f"{HOST}:{port}"}
        if action.get("service"):
            body["service"] = action["service"]
        return Converted({**body, **timing(probe, kind)})
    scheme = str(action.get("scheme") or "HTTP").lower()
    path = str(action.get("path") or "/")
    body = {"type": "http", "url": f"{scheme}://{HOST}:{port}{path if path.startswith('/') else '/' + path}"}
    headers = {}
    for header in action.get("httpHeaders") or ():
        name, value = str(header.get("name", "")), str(header.get("value", ""))
        if name in headers:
            return Kept(f"it sends the header {name} twice, which a check's header mapping cannot")
        headers[name] = value
    if headers:
        body["headers"] = headers
    if scheme == "https":
        body["tls_verify"] = False  # as the kubelet: it does not verify the app's certificate either
    return Converted({**body, **timing(probe, kind)})


def _grpc_health_probe(command: Any) -> dict[str, Any] | str:
    """The grpc check of a `grpc_health_probe -addr=...` command ({address, service}), or why it is not one."""
    if not isinstance(command, list) or not all(isinstance(w, str) for w in command):
        return "an exec probe runs in the app's filesystem, which the agent cannot reach"
    commands = simple_commands(command)
    if len(commands) != 1 or posixpath.basename(commands[0][0]) != GRPC_HEALTH_PROBE:
        return "an exec probe runs in the app's filesystem, which the agent cannot reach"
    options: dict[str, str] = {}
    args = commands[0][1:]
    i = 0
    while i < len(args):
        word = args[i].lstrip("-")
        if not args[i].startswith("-"):
            return f"grpc_health_probe's argument {args[i]!r} is not an option"
        name, eq, value = word.partition("=")
        if not eq and name not in ("v", "gzip", "tls", "tls-no-verify", "alsologtostderr", "spiffe"):
            if i + 1 >= len(args):
                return f"grpc_health_probe's option -{name} has no value"
            value, i = args[i + 1], i + 1
        options[name] = value
        i += 1
    unknown = sorted(set(options) - GRPC_IGNORED_FLAGS - {"addr", "service"})
    if unknown:
        return f"grpc_health_probe's options {', '.join('-' + u for u in unknown)} (TLS, headers) have no grpc check equivalent"
    if "addr" not in options:
        return "grpc_health_probe has no -addr"
    host, sep, port = options["addr"].rpartition(":")
    if not sep or not port.isdigit():
        return f"grpc_health_probe's -addr {options['addr']!r} is not host:port"
    if host.strip("[]") and not is_local(host.strip("[]")):
        return f"grpc_health_probe asks {host}, not this pod"
    found: dict[str, Any] = {"address": f"{HOST}:{port}"}
    if options.get("service"):
        found["service"] = options["service"]
    return found
