"""Running the rules: documents (or plain mappings) in, sorted findings out; no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.lint import rules_probes, rules_shutdown
from agent.lint.agentinfo import find_agent
from agent.lint.context import Context, app_containers
from agent.lint.findings import ERROR, Finding
from agent.lint.model import parse_documents
from agent.lint.source import Document

ALL_RULES = (*rules_probes.RULES, *rules_shutdown.RULES)


@dataclass
class Result:
    findings: list[Finding]
    objects: int
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when a finding is at error level: the command exits 1."""
        return any(f.severity == ERROR for f in self.findings)


def lint_documents(documents: Sequence[Document], agent_config: tuple[str, str] | None = None) -> Result:
    """Every finding for the workloads among `documents`; `agent_config` is (origin, text) of --agent-config."""
    workloads, data = parse_documents(documents)
    findings: list[Finding] = []
    for workload in workloads:
        agent = find_agent(workload, data, agent_config)
        ctx = Context(workload, agent, app_containers(workload.pod, agent))
        for rule in ALL_RULES:
            findings.extend(rule(ctx))
    return Result(sorted(set(findings), key=Finding.sort_key), len(workloads))


def lint_objects(objects: Sequence[Mapping[str, Any]], agent_config: str | None = None, file: str = "<input>") -> list[Finding]:
    """The findings for Kubernetes objects given as mappings (tests, and callers that parsed YAML themselves)."""
    given = ("--agent-config", agent_config) if agent_config is not None else None
    return lint_documents([Document(file, None, o) for o in objects], given).findings
