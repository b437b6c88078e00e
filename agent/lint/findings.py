"""What a lint run reports: the rule table, findings, and unreadable input."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from agent.probes import HOOK_WINDOW


class Severity(enum.StrEnum):
    """A rule's level: an error makes `lint` exit 1."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO


@dataclass(frozen=True)
class Rule:
    """A lint rule: its id, its level, and what goes wrong (one line; docs/lint.md lists it)."""

    id: str
    severity: Severity
    summary: str


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("liveness-dependency", ERROR,
         "the liveness probe reaches a dependency: another host (`host:`, or an exec probe running `pg_isready -h db`, "
         "`redis-cli -h`, `curl http://other`, `nc`, `nslookup`...), a port of another container, or the agent's "
         "`/readyz`; a blip restarts every replica at once"),
    Rule("liveness-same-as-readiness", ERROR,
         "liveness and readiness run the same check: whatever should only take the pod out of the Service restarts it too"),
    Rule("startup-probe-missing", WARNING,
         "liveness has `initialDelaySeconds` of 30 or more and there is no startup probe: a slower start is killed "
         "forever, a hang after a fast start goes unnoticed"),
    Rule("probe-wrong-endpoint", ERROR,
         "a probe on the agent's port asks another probe's endpoint (readiness on `/livez` never fails during the drain), "
         "`/agent/*`, or a path the agent does not serve; or the agent's own probe asks another port"),
    Rule("probe-port-unresolved", ERROR,
         "a probe or hook names a port its own container does not declare (declaring it on the agent's container does not "
         "count)"),
    Rule("agent-probes-app-endpoints", ERROR,
         "the agent's own probes ask `/livez`, `/readyz` or `/startupz` instead of `/agent/livez` and `/agent/readyz`: the"
         " agent is restarted for the app's faults"),
    Rule("liveness-window-too-short", ERROR,
         "the app's liveness on the agent gives up before a crashed agent is back (see the restart time below)"),
    Rule("probe-rejected", ERROR,
         "values the API server rejects: `successThreshold` other than 1 on liveness or startup, negative values, no "
         "handler or two, a bad port, probes on a plain init container"),
    Rule("probe-starts-python", WARNING,
         "an exec probe starts a Python interpreter (`python`, a `*.py` script, the `sidecar-agent` CLI) on every run: "
         "tens of MB and 50-100 ms of CPU each time, enough to time out under a CPU limit"),
    Rule("prestop-missing", ERROR,
         "an app container has no preStop hook while the agent runs beside it (not for Jobs and CronJobs, nor in `exec` "
         "mode): its SIGTERM races the endpoint removal and requests are dropped on every rollout"),
    Rule("prestop-wrong-target", ERROR,
         "the preStop hook does not order the app's SIGTERM after the drain: it calls neither `/prestop` on the agent's "
         "port, nor `/prestop/wait` with something that starts the agent's stop at once (its own SIGTERM as a regular "
         "container, or its own preStop `sidecar-agent stop` as a native sidecar), nor, when the agent relays no signal, "
         "sleeps at least the drain (another port, path or host, or a shorter sleep). Not for Jobs and CronJobs, which have "
         "no Service to drain: their own hooks stay as they are"),
    Rule("prestop-no-token", ERROR,
         "a preStop `httpGet` to `/prestop` comes from the node, so the agent refuses it unless its config sets "
         "`admin.token_file` or `admin.token_env` (403) and the hook sends `Authorization: Bearer ...` (401); `$(VAR)` is "
         "not expanded in `httpHeaders`. An `exec` hook calling `http://127.0.0.1:PORT/prestop` needs no token"),
    Rule("prestop-restart-stops-agent", WARNING,
         "the kubelet also runs a preStop hook when it restarts the one container for a failed liveness or startup probe; "
         "this hook calls `/prestop`, but that probe does not ask the agent (or the hook does not name its check with "
         "`?check=NAME`), so the agent cannot tell the restart from a pod stop: it fails readiness, drains and exits"),
    Rule("prestop-restart-held", INFO,
         "the kubelet also runs a preStop hook when it restarts the one container for a failed liveness or startup probe; "
         "this hook waits on `/prestop/wait`, but that probe does not ask the agent (or the hook does not name its check "
         "with `?check=NAME`), so the agent holds the restart until no stop has begun for its window "
         f"({HOOK_WINDOW:g} s)"),
    Rule("relay-without-shared-pid", ERROR,
         "the config finds the app with `app.match` (to relay the stop signal, or for process checks) but the pod neither "
         "sets `shareProcessNamespace: true` nor runs the app under `sidecar-agent exec`"),
    Rule("agent-cannot-signal", ERROR,
         "the agent relays the stop signal to an app of another `runAsUser` without an effective `CAP_KILL`: root that "
         "keeps (or adds back) `KILL`; for a non-root agent `capabilities.add: [KILL]` is not effective (no ambient "
         "capabilities)"),
    Rule("app-behind-shell", WARNING,
         "an app container's `command`/`args` run the app through `sh -c` (several commands, no `exec` before the last), "
         "a shell script or a launcher (npm, yarn) while the agent relays the stop signal (in `exec` mode: with "
         "`stop_scope: process`): the kubelet's own SIGTERM, and with `stop_scope: process` the agent's, stop the wrapper, "
         "not the app; lint cannot see an image's own `CMD` (see wrappers.md)"),
    Rule("grace-period-too-short", ERROR,
         "`terminationGracePeriodSeconds` (default 30) is less than the shutdown budget (`max(drain_delay, "
         "drain_connections.timeout)`, plus `stop_timeout` when relaying) plus 5 s for the hook, the signals and the exits"),
    Rule("drain-shorter-than-readiness", ERROR,
         "`shutdown.drain_delay` is shorter than the app's readiness `periodSeconds` times `failureThreshold` on the agent: the "
         "app is signalled before the kubelet can see readiness fail"),
    Rule("agent-config-invalid", ERROR,
         "the agent's config does not load (each problem with its key path): the agent would exit with code 2"),
    Rule("agent-config-not-found", INFO,
         "the config the agent reads is not in the files linted: the rules that need it were skipped; lint the ConfigMap's"
         " file too, or pass `--agent-config`"),
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
    def severity(self) -> Severity:
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
