"""What a lint run reports: the rule table, findings, and unreadable input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (ERROR, WARNING, INFO)


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    summary: str


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("liveness-dependency", ERROR,
         "the liveness probe reaches a dependency (another host or container, or the agent's /readyz)"),
    Rule("liveness-same-as-readiness", ERROR, "the liveness probe is the readiness probe"),
    Rule("startup-probe-missing", WARNING, "a long liveness initialDelaySeconds stands in for a startup probe"),
    Rule("probe-wrong-endpoint", ERROR, "a probe on the agent's port asks the wrong endpoint, or one the agent does not serve"),
    Rule("probe-port-unresolved", ERROR, "a named port that the probed container does not declare"),
    Rule("agent-probes-app-endpoints", ERROR, "the agent's own probes use /livez, /readyz or /startupz"),
    Rule("liveness-window-too-short", ERROR, "the app's liveness fails before a crashed agent is back"),
    Rule("probe-rejected", ERROR, "probe values the Kubernetes API server rejects"),
    Rule("probe-starts-python", WARNING, "an exec probe starts a Python interpreter on every run"),
    Rule("prestop-missing", ERROR, "an app container without a preStop hook beside the agent"),
    Rule("prestop-wrong-target", ERROR, "a preStop hook that does not call /prestop on the agent's port"),
    Rule("prestop-no-token", ERROR, "a preStop httpGet the agent will refuse (no token configured, or no header)"),
    Rule("relay-without-shared-pid", ERROR, "the agent must see the app, but the pod does not share its process namespace"),
    Rule("agent-cannot-signal", ERROR, "the agent runs as another user than the app, without an effective CAP_KILL"),
    Rule("app-behind-shell", WARNING, "the app runs behind a shell or launcher that keeps the stop signal from it"),
    Rule("grace-period-too-short", ERROR, "terminationGracePeriodSeconds below the agent's shutdown budget plus a margin"),
    Rule("drain-shorter-than-readiness", ERROR, "drain_delay ends before the kubelet can see readiness fail"),
    Rule("agent-config-invalid", ERROR, "the agent's config does not load"),
    Rule("agent-config-not-found", INFO, "the agent's config is not in the files given, so the rules that need it were skipped"),
)}


@dataclass(frozen=True)
class Finding:
    """One problem: which rule, where (file, line, object, container), what goes wrong and the fix."""

    rule: str
    file: str
    line: int | None
    object: str
    container: str | None
    message: str
    fix: str
    namespace: str | None = None

    @property
    def severity(self) -> str:
        return RULES[self.rule].severity

    def sort_key(self) -> tuple[str, int, str, str, str]:
        return (self.file, self.line or 0, self.object, self.container or "", self.rule)

    def as_json(self) -> dict[str, Any]:
        """The finding as the JSON output carries it."""
        return {"rule": self.rule, "severity": self.severity, "file": self.file, "line": self.line,
                "object": self.object, "namespace": self.namespace, "container": self.container,
                "message": self.message, "fix": self.fix}


class InputError(Exception):
    """Input that cannot be linted (not YAML, not Kubernetes objects, missing): `file:line: message`, exit 2."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")
