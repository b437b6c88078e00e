"""What every rule sees of one workload: its pod, the agent (if any), the app containers, and where probes go."""

from __future__ import annotations

from dataclasses import dataclass

from agent.lint.agentinfo import Agent
from agent.lint.findings import Finding
from agent.lint.model import Container, Handler, Pod, Workload
from agent.probes import PATHS

NETWORK = ("httpGet", "tcpSocket", "grpc")
AGENT_ENDPOINTS = ("agent/livez", "agent/readyz")


def endpoint(path: str) -> str:
    """Which agent endpoint a path asks: livez, readyz, startupz (with or without /NAME), agent/livez, ... or the path."""
    bare = path.split("?", 1)[0].split("#", 1)[0].rstrip("/") or "/"
    for name in PATHS:
        if bare == f"/{name}" or bare.startswith(f"/{name}/"):
            return name
    return bare.lstrip("/") if bare in ("/agent/livez", "/agent/readyz", "/prestop") else bare


@dataclass(frozen=True)
class Context:
    workload: Workload
    agent: Agent | None
    apps: tuple[Container, ...]

    @property
    def pod(self) -> Pod:
        return self.workload.pod

    def finding(self, rule: str, container: Container | None, line: int | None, message: str, fix: str) -> Finding:
        """A finding of `rule` on this workload (line: the most precise one known)."""
        where = line or (container.line if container else None) or self.pod.line or self.workload.line
        return Finding(rule, self.workload.file, where, self.workload.ref, container.name if container else None,
                       message, fix, self.workload.namespace)

    def is_agent(self, container: Container) -> bool:
        return self.agent is not None and container is self.agent.container

    def is_run_agent(self, container: Container) -> bool:
        """The agent's own container in `run` mode (in `exec` mode that container is the app as well)."""
        return self.agent is not None and self.agent.mode == "run" and container is self.agent.container

    def to_agent(self, container: Container, handler: Handler) -> bool:
        """A network probe or hook of `container` that goes to the agent's port in this pod."""
        return goes_to_agent(self.agent, container, handler)

    def owner(self, container: Container, port: int) -> Container | None:
        """Another container of the pod that declares `port` (None when it is this container's own, or undeclared)."""
        if port in container.numbers:
            return None
        return next((c for c in self.pod.running if c is not container and port in c.numbers), None)


def goes_to_agent(agent: Agent | None, container: Container, handler: Handler) -> bool:
    """A network probe or hook of `container` that goes to the agent's port in the same pod."""
    return (agent is not None and handler.type in NETWORK and not handler.host
            and container.resolve(handler.port) == agent.port)


def app_containers(pod: Pod, agent: Agent | None) -> tuple[Container, ...]:
    """The app containers: those whose probes or preStop hook go to the agent, else every regular container but the
    agent's; in `exec` mode the agent's own container runs the app."""
    if agent is None:
        return pod.containers
    others = [c for c in pod.containers if c is not agent.container]
    probing = [c for c in others if any(goes_to_agent(agent, c, p.handler) for p in c.probes.values())
               or (c.pre_stop is not None and goes_to_agent(agent, c, c.pre_stop))]
    if agent.mode == "exec":
        return (agent.container, *probing)
    return tuple(probing or others)
