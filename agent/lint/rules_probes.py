"""The probe rules: what each probe reaches, whether it asks the right endpoint, and values Kubernetes rejects."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from agent.kube.facts import AGENT_RESTART_SECONDS
from agent.lint.commands import starts_python, targets
from agent.lint.context import AGENT_ENDPOINTS, NETWORK, Context, endpoint
from agent.lint.findings import Finding
from agent.lint.model import Container, Handler
from agent.probes import PATHS, Probe, named

# A liveness initialDelaySeconds this long is standing in for a startup probe (the slow-start case).
LONG_INITIAL_DELAY = 30
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


def _describe(container: Container, handler: Handler) -> str:
    if handler.type == "httpGet":
        return f"GET {handler.host}:{handler.port}{handler.path}" if handler.host else f"GET :{handler.port}{handler.path}"
    if handler.type in ("tcpSocket", "grpc"):
        return f"{handler.type} {handler.host}:{handler.port}" if handler.host else f"{handler.type} :{handler.port}"
    if handler.type == "exec":
        return "exec " + " ".join(handler.command)[:80]
    return handler.type or "no action"


def _key(container: Container, handler: Handler) -> tuple[Any, ...] | None:
    if handler.type == "httpGet":
        return ("http", handler.scheme, handler.host, container.resolve(handler.port) or handler.port,
                handler.path.rstrip("/") or "/", tuple(sorted(handler.headers)))
    if handler.type in ("tcpSocket", "grpc"):
        return (handler.type, handler.host, container.resolve(handler.port) or handler.port, handler.service)
    if handler.type == "exec":
        return ("exec", handler.command)
    return None


def _live_fix(ctx: Context) -> str:
    if ctx.agent is not None:
        return (f"check only this process in liveness (httpGet /livez on the agent's port {ctx.agent.port}) and keep "
                "dependencies in readiness (/readyz)")
    return "check only this process in liveness (an endpoint that calls nothing else); keep dependencies in readiness"


def liveness_dependency(ctx: Context) -> Iterator[Finding]:
    """A liveness probe that reaches another host, another container, or the agent's /readyz."""
    for c in ctx.pod.running:
        probe = c.probes.get(Probe.LIVENESS)
        if probe is None or ctx.is_run_agent(c):
            continue
        h, reasons = probe.handler, []
        if h.type in ("httpGet", "tcpSocket") and h.host:
            reasons.append(f"its host: {h.host} sends it away from this pod")
        elif h.type in NETWORK:
            port = c.resolve(h.port)
            owner = ctx.owner(c, port) if port is not None else None
            if ctx.agent is not None and port == ctx.agent.port:
                if h.type == "httpGet" and endpoint(h.path) == Probe.READINESS.path:
                    reasons.append("it asks the agent's /readyz, which fails whenever a readiness check, a dependency, fails")
            elif owner is not None:
                reasons.append(f"port {port} belongs to container {owner.name}")
        elif h.type == "exec":
            for t in targets(h.command):
                owner = ctx.owner(c, t.port) if t.port is not None and not t.host else None
                if t.host:
                    reasons.append(f"`{t.program}` connects to {t.host}")
                elif ctx.agent is not None and t.port == ctx.agent.port and endpoint(t.path or "") == Probe.READINESS.path:
                    reasons.append(f"`{t.program}` asks the agent's /readyz, which fails whenever a dependency fails")
                elif owner is not None and not ctx.is_agent(owner):
                    reasons.append(f"`{t.program}` connects to port {t.port} of container {owner.name}")
        if reasons:
            yield ctx.finding("liveness-dependency", c, probe.line,
                              f"the liveness probe reaches a dependency ({'; '.join(reasons)}): when that blips, the "
                              "kubelet restarts this container in every replica at once (a restart storm)", _live_fix(ctx))


def liveness_same_as_readiness(ctx: Context) -> Iterator[Finding]:
    """A liveness probe identical to the readiness probe."""
    for c in ctx.pod.running:
        live, ready = c.probes.get(Probe.LIVENESS), c.probes.get(Probe.READINESS)
        if live is None or ready is None or ctx.is_run_agent(c) or ctx.to_agent(c, live.handler):
            continue  # on the agent's port, one of the two asks the wrong endpoint: the endpoint rules say which
        key = _key(c, live.handler)
        if key is not None and key == _key(c, ready.handler):
            yield ctx.finding("liveness-same-as-readiness", c, live.line,
                              f"liveness and readiness run the same check ({_describe(c, live.handler)}): whatever should "
                              "only take the pod out of the Service (overload, a dependency down, the drain) restarts it too",
                              _live_fix(ctx))


def startup_probe_missing(ctx: Context) -> Iterator[Finding]:
    """A long liveness initialDelaySeconds and no startup probe."""
    for c in ctx.pod.running:
        live = c.probes.get(Probe.LIVENESS)
        if live is None or Probe.STARTUP in c.probes or live.initial_delay < LONG_INITIAL_DELAY:
            continue
        target = "the agent's /startupz" if ctx.agent is not None and ctx.to_agent(c, live.handler) else "the liveness check"
        yield ctx.finding("startup-probe-missing", c, live.line,
                          f"liveness waits initialDelaySeconds: {live.initial_delay} instead of a startup probe: a start "
                          f"slower than that is killed and restarted forever, and a hang after a fast start goes "
                          f"unnoticed for {live.initial_delay}s",
                          f"add a startupProbe ({target}) whose failureThreshold x periodSeconds covers the slowest start, "
                          "and drop initialDelaySeconds")


_CONSEQUENCES = {
    ("readiness", "livez"): "the drain and the dependencies never fail it: the Service keeps routing to a stopping pod",
    ("readiness", "startupz"): "it latches once started: the drain and the dependencies never take the pod out of rotation",
    ("liveness", "startupz"): "it latches once started: a hung app is never restarted",
    ("startup", "livez"): "/livez answers 200 before startup has passed, so the startup probe passes at once",
    ("startup", "readyz"): "it also fails on dependencies: a dependency down at start keeps restarting the app",
    ("readiness", "agent/livez"): "that is the agent's own health: the app's faults never take it out of rotation",
    ("readiness", "agent/readyz"): "that is the agent's own health: the app's faults never take it out of rotation",
    ("liveness", "agent/livez"): "that is the agent's own health: the app is restarted for the agent's faults, never its own",
    ("liveness", "agent/readyz"): "that is the agent's own health: the app is restarted for the agent's faults, never its own",
    ("startup", "agent/livez"): "that is the agent's own health: the app's startup checks are never waited for",
    ("startup", "agent/readyz"): "that is the agent's own health: the app's startup checks are never waited for",
}


def probe_wrong_endpoint(ctx: Context) -> Iterator[Finding]:
    """A probe on the agent's port that asks another probe's endpoint, or a path the agent does not serve."""
    if ctx.agent is None:
        return
    port = ctx.agent.port
    for c in ctx.pod.running:
        for kind, probe in c.probes.items():
            h = probe.handler
            if ctx.is_run_agent(c):
                resolved = c.resolve(h.port)
                if h.type not in NETWORK or h.host or resolved is None:
                    continue
                if resolved != port:
                    yield ctx.finding("probe-wrong-endpoint", c, probe.line,
                                      f"the agent's {kind} probe asks port {resolved}, but the agent listens on {port}: "
                                      "it always fails and the kubelet restarts the agent", f"use port {port}")
                elif h.type == "httpGet" and endpoint(h.path) not in (*AGENT_ENDPOINTS, *PATHS):
                    yield ctx.finding("probe-wrong-endpoint", c, probe.line,
                                      f"the agent does not serve {h.path}: the probe gets 404 and fails",
                                      f"use /agent/livez (liveness) or /agent/readyz (readiness, startup) on port {port}")
                continue
            if not ctx.to_agent(c, h):
                continue
            want = named(kind).path
            if h.type != "httpGet":
                yield ctx.finding("probe-wrong-endpoint", c, probe.line,
                                  f"a {h.type} {kind} probe on the agent's port only sees that the agent accepts "
                                  "connections, never what the agent knows of the app", f"use httpGet /{want} on port {port}")
                continue
            got = endpoint(h.path)
            if got == want or (kind == Probe.LIVENESS and got == Probe.READINESS.path):  # the latter is liveness-dependency
                continue
            consequence = _CONSEQUENCES.get((kind, got))
            if consequence is None and got == "prestop":
                consequence = "GET /prestop starts the agent's shutdown sequence"
            yield ctx.finding("probe-wrong-endpoint", c, probe.line,
                              f"the {kind} probe asks the agent's {h.path}: "
                              f"{consequence or 'the agent does not serve that path, so the probe gets 404 and fails'}",
                              f"use path /{want} (port {port})")


def probe_port_unresolved(ctx: Context) -> Iterator[Finding]:
    """A named port that the probed container itself does not declare."""
    for c in ctx.pod.running:
        handlers = [(f"{k} probe", p.handler, p.line) for k, p in c.probes.items()]
        if c.pre_stop is not None:
            handlers.append(("preStop hook", c.pre_stop, c.pre_stop.line))
        for what, h, line in handlers:
            if h.type not in NETWORK or not isinstance(h.port, str) or c.resolve(h.port) is not None:
                continue
            if not PORT_NAME.match(h.port):
                continue  # not a valid name at all: probe-rejected says so
            owner = next((o for o in ctx.pod.running if o is not c and o.resolve(h.port) is not None), None)
            elsewhere = f" (container {owner.name} declares it, but a name resolves only against this container's ports)" \
                if owner else ""
            number = f"the number {owner.resolve(h.port)}" if owner else "a port number"
            yield ctx.finding("probe-port-unresolved", c, line,
                              f"the {what} names port '{h.port}', which container {c.name} does not declare{elsewhere}: "
                              "the kubelet cannot resolve it and the probe always fails",
                              f"declare the port in this container's ports, or write {number}")


def agent_probes_app_endpoints(ctx: Context) -> Iterator[Finding]:
    """The agent container's own probes on /livez, /readyz or /startupz."""
    if ctx.agent is None or ctx.agent.mode != "run":
        return
    c = ctx.agent.container
    for kind, probe in c.probes.items():
        h = probe.handler
        got = endpoint(h.path) if h.type == "httpGet" and not h.host else ""
        if got not in PATHS or c.resolve(h.port) != ctx.agent.port:
            continue
        action = "restart the agent" if kind == Probe.LIVENESS else "hold the agent unready"
        yield ctx.finding("agent-probes-app-endpoints", c, probe.line,
                          f"the agent's {kind} probe asks {h.path}, which answers for the app: the kubelet would {action} "
                          "whenever the app fails, and while the agent restarts the app's own probes fail too",
                          "use /agent/livez for the agent's liveness and /agent/readyz for its readiness and startup")


def liveness_window_too_short(ctx: Context) -> Iterator[Finding]:
    """The app's liveness on the agent fails before a crashed agent can be back."""
    if ctx.agent is None or ctx.agent.mode != "run":
        return
    for c in ctx.apps:
        live = c.probes.get(Probe.LIVENESS)
        if live is None or c is ctx.agent.container or not ctx.to_agent(c, live.handler):
            continue
        window = (live.failure - 1) * live.period
        if window > AGENT_RESTART_SECONDS:
            continue
        yield ctx.finding("liveness-window-too-short", c, live.line,
                          f"without the agent this liveness probe fails for good after {window}s (failureThreshold "
                          f"{live.failure} x periodSeconds {live.period}, the first failure right after the crash), but a "
                          f"crashed agent answers again only after about {AGENT_RESTART_SECONDS:g}s (the kubelet's 10s "
                          "restart back-off, plus noticing the exit and starting): an agent crash restarts the app too",
                          f"make (failureThreshold - 1) x periodSeconds more than {AGENT_RESTART_SECONDS:g}s, "
                          "e.g. periodSeconds: 10 with failureThreshold: 3")


def probe_rejected(ctx: Context) -> Iterator[Finding]:
    """Probe values the API server rejects."""
    for c in (*ctx.pod.init_containers, *ctx.pod.containers):
        if c.init and not c.sidecar and c.probes:
            yield ctx.finding("probe-rejected", c, None, "an init container may not have probes (it must exit)",
                              "remove the probes, or make it a native sidecar (restartPolicy: Always)")
            continue
        for kind, probe in c.probes.items():
            h, problems = probe.handler, []
            if kind != Probe.READINESS and probe.given.get("successThreshold", 1) not in (0, 1):
                problems.append(f"successThreshold must be 1 for a {kind} probe, got {probe.given['successThreshold']}")
            problems += [f"{k} must not be negative, got {v}" for k, v in probe.given.items() if v < 0]
            if len(h.all_types) != 1:
                problems.append("it needs exactly one of httpGet, tcpSocket, exec, grpc, got "
                                + (", ".join(h.all_types) if h.all_types else "none"))
            elif h.type in NETWORK and h.port is None:
                problems.append(f"{h.type}.port is required")
            elif isinstance(h.port, int) and not 1 <= h.port <= 65535:
                problems.append(f"port {h.port} is not between 1 and 65535")
            elif isinstance(h.port, str) and not PORT_NAME.match(h.port):
                problems.append(f"port {h.port!r} is neither a number nor a port name (lowercase, a letter, at most 15)")
            elif h.type == "exec" and not h.command:
                problems.append("exec.command is empty")
            if problems:
                yield ctx.finding("probe-rejected", c, probe.line,
                                  f"the API server rejects this {kind} probe: {'; '.join(problems)}",
                                  "fix the value (successThreshold: 1 for liveness and startup; unquoted port numbers)")


def probe_starts_python(ctx: Context) -> Iterator[Finding]:
    """An exec probe that starts a Python interpreter on every run."""
    for c in ctx.pod.running:
        for kind, probe in c.probes.items():
            name = starts_python(probe.handler.command) if probe.handler.type == "exec" else None
            if name is None:
                continue
            if ctx.agent is None:
                where = "an httpGet probe"
            else:
                path = "/agent/livez or /agent/readyz" if ctx.is_run_agent(c) else f"/{named(kind).path}"
                where = f"httpGet {path} on the agent's port {ctx.agent.port}"
            yield ctx.finding("probe-starts-python", c, probe.line,
                              f"the {kind} probe runs {name}: a new Python interpreter every {probe.period}s costs tens of "
                              f"MB and 50-100 ms of CPU, and under a CPU limit it can exceed timeoutSeconds "
                              f"({probe.timeout}s) and fail the probe for no fault of the app",
                              f"use {where}, or a small compiled tool")


RULES = (liveness_dependency, liveness_same_as_readiness, startup_probe_missing, probe_wrong_endpoint,
         probe_port_unresolved, agent_probes_app_endpoints, liveness_window_too_short, probe_rejected, probe_starts_python)
