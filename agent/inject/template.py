"""Injection of one pod template: skip rules, probes to checks, the agent's container, the shutdown hooks, the grace
period, and the status annotation that `remove` and a second injection read."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml

from agent import __version__
from agent.config import ANY_HOST
from agent.inject import container as agent_spec
from agent.inject import hooks, probes, settings
from agent.inject.api import Drain, InjectError, Options, Outcome
from agent.inject.edits import Editor, Path, plain, undo, walk
from agent.kube import kubelet_env, versions
from agent.kube.facts import DEFAULT_GRACE_PERIOD, GRACE_MARGIN_SECONDS, JOB_KINDS
from agent.kube.qos import QosClass, QuantityError, pod_level, qos_class
from agent.units import format_address

STATUS = "sidecar-agent.io/status"
OPT_OUT = "sidecar-agent.io/inject"
DRAIN = "sidecar-agent.io/drain"
STATUS_WHERE = f'metadata.annotations["{STATUS}"]'
CHECK_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _skip(template: dict[str, Any], why: str) -> Outcome:
    return Outcome(template, False, [f"not injected: {why}"])


def _mapping(node: Any, key: str) -> Mapping[str, Any]:
    value = node.get(key) if isinstance(node, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _check_name(container: str, kind: str, taken: set[str]) -> str:
    suffix = f"-{kind}"
    name = CHECK_NAME.sub("-", container)[:63 - len(suffix)] + suffix
    n = 2
    while name in taken:
        name = f"{CHECK_NAME.sub('-', container)[:63 - len(suffix) - 3]}{n}{suffix}"
        n += 1
    taken.add(name)
    return name


def _skip_reason(template: Mapping[str, Any]) -> str | None:
    meta, spec = _mapping(template, "metadata"), _mapping(template, "spec")
    if str(_mapping(meta, "labels").get(OPT_OUT)).lower() == "false" or \
            str(_mapping(meta, "annotations").get(OPT_OUT)).lower() == "false":
        return f'opted out ({OPT_OUT}: "false")'
    if STATUS in _mapping(meta, "annotations"):
        return f"already injected ({STATUS} is set); --remove takes it out"
    if spec.get("hostNetwork") is True:
        return f"hostNetwork: true, so the agent's port {settings.LISTEN_PORT} would be the node's"
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers or not all(isinstance(c, Mapping) for c in containers):
        return "spec.containers is missing or empty"
    inits = spec.get("initContainers") or []
    for c in [*containers, *(i for i in inits if isinstance(i, Mapping))]:
        if c.get("name") == agent_spec.NAME or "sidecar-agent" in str(c.get("image", "")).rsplit("/", 1)[-1]:
            return f"container {c.get('name')} already runs sidecar-agent"
        if any(isinstance(p, Mapping) and p.get("containerPort") == settings.LISTEN_PORT for p in c.get("ports") or ()):
            return f"container {c.get('name')} already uses port {settings.LISTEN_PORT}, the agent's"
    return None


def inject(template: Mapping[str, Any], options: Options, kind: str = "Pod") -> Outcome:
    """Add the agent to a pod template ({"metadata", "spec"}); see agent.inject for the contract."""
    version = options.kubernetes_version
    mode, job = versions.mode(version), kind in JOB_KINDS
    native = mode.native
    result = plain(template)
    reason = _skip_reason(result)
    if reason:
        return _skip(result, reason)
    try:  # the class the pod has before injection, which the agent's resources keep (pod-level resources keep it alone)
        before = qos_class(result["spec"])
    except QuantityError as exc:
        raise InjectError(f"spec.{exc}", ("spec", *exc.path)) from None
    guaranteed = before is QosClass.GUARANTEED and not pod_level(result["spec"])
    endpoints = not job and _drain(result, options) is Drain.ENDPOINTS
    hooks_or_refusal = [] if job else _pre_stops(result["spec"])
    if isinstance(hooks_or_refusal, str):
        return _skip(result, hooks_or_refusal)
    edit = Editor(result)
    spec = result["spec"]
    notes: list[str] = []
    if before is QosClass.BEST_EFFORT:
        requests = agent_spec.REQUESTS
        notes.append(f"QoS class BestEffort becomes Burstable: the agent requests cpu {requests['cpu']} and memory "
                     f"{requests['memory']}")
    extra = settings.annotation_checks(_mapping(result.get("metadata"), "annotations"))
    generated, kept, own = _probes(edit, spec, job, notes)
    for base, hook, note in hooks_or_refusal:
        if hook is AGENT_HOOK:  # the container had none: the agent's, naming its own liveness and startup checks
            hook = hooks.app_pre_stop(mode, own.get(base[-1], ()), wait=endpoints)
        if note:
            notes.append(note)
        if hook is not None:
            container = walk(result, base)
            if isinstance(container.get("lifecycle"), Mapping):
                edit.set((*base, "lifecycle", "preStop"), hook)
            else:
                edit.set((*base, "lifecycle"), {"preStop": hook})
    drain = 0 if job else hooks.DRAIN_SECONDS
    grace = _grace_period(edit, spec, drain, notes)

    checks = settings.merge(generated, extra)
    for name, body in extra.items():
        if name not in generated and isinstance(body, Mapping) and "liveness" in (body.get("probes") or ()):
            notes.append(f"check {name} of {settings.CHECKS_ANNOTATION} is under liveness, but each container's liveness "
                         "asks only the check made from its own probe: it shows in /livez and /status, and restarts nothing")
    config: dict[str, Any] = {"listen": format_address(ANY_HOST, settings.LISTEN_PORT)}  # dual-stack: any pod IP
    if job and not native:
        # A regular container outlives the app, and the Job would never complete: the agent watches the app's
        # container in the shared process namespace and exits with it (app.py: other_containers).
        config["app"] = {"match": {"other_containers": True}, "exit_with_app": True}
        if spec.get("shareProcessNamespace") is not True:
            edit.set(("spec", "shareProcessNamespace"), True)
            notes.append("shareProcessNamespace set to true: the agent sees the app finish and exits with it, so the "
                         "Job completes")
    config.update({"checks": checks, "shutdown": {"drain_delay": f"{drain}s", "relay_signal": False,
                                                  "grace_period": f"{grace}s"}})
    if endpoints:
        config["shutdown"]["endpoints"] = {"enabled": "auto"}
        if spec.get("automountServiceAccountToken") is False:
            notes.append("automountServiceAccountToken is false: without a token the agent drains for drain_delay, "
                         "not until the pod has left its EndpointSlices (docs/shutdown.md)")
    settings.validate(config, generated, extra)
    env = settings.copied_env(settings.variables(extra), spec["containers"])
    if endpoints:
        env += hooks.downward_env()
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    agent = agent_spec.agent_container(options.image, kubelet_env.escape(text), env, native=native,
                                       pre_stop=None if job else hooks.agent_pre_stop(native), guaranteed=guaranteed)
    edit.append(("spec", "initContainers" if native else "containers"), agent)

    if not isinstance(result.get("metadata"), Mapping):
        edit.set(("metadata",), {})
    if not isinstance(result["metadata"].get("annotations"), Mapping):
        edit.set(("metadata", "annotations"), {})
    status = {"version": __version__, "kubernetes": f"{version[0]}.{version[1]}",
              "kubernetes_from": options.kubernetes_source.value,
              "sidecar": mode.sidecar, "checks": list(checks), "kept": kept, "edits": edit.record}
    if endpoints:
        status["drain"] = Drain.ENDPOINTS.value
    result["metadata"]["annotations"][STATUS] = json.dumps(status, separators=(",", ":"))
    return Outcome(result, True, notes)


def _probes(edit: Editor, spec: dict[str, Any], job: bool,
            notes: list[str]) -> tuple[dict[str, dict[str, Any]], list[str], dict[Any, list[str]]]:
    """Each app container's probes made checks, and the kubelet's probes pointed at the agent; returns the checks,
    the probes kept as they were, and each container's (by index) liveness and startup checks."""
    generated: dict[str, dict[str, Any]] = {}
    kept: list[str] = []
    taken: set[str] = set()
    own: dict[Any, list[str]] = {}
    for index, c in enumerate(spec["containers"]):
        name = str(c.get("name"))
        base: Path = ("spec", "containers", index)
        for key, probe_kind in probes.KINDS.items():
            probe = c.get(key)
            if not isinstance(probe, Mapping):
                continue
            found = probes.convert(c, key, probe)
            if isinstance(found, probes.Kept):
                kept.append(f"{name}.{key}: {found.reason}")
                notes.append(f"container {name}: {key} left as it was: {found.reason}")
                continue
            check = _check_name(name, probe_kind, taken)
            generated[check] = found.body
            if probe_kind != "readiness":  # a failed liveness or startup probe kills the container
                own.setdefault(index, []).append(check)
            if probe_kind == "liveness":
                edit.set((*base, key), agent_spec.liveness(check))
            elif probe_kind == "readiness":
                edit.set((*base, key), agent_spec.readiness())
            else:
                edit.set((*base, key), agent_spec.startup(check, probe))
        if not job and c.get("readinessProbe") is None:  # the drain needs the pod's readiness on the agent
            edit.set((*base, "readinessProbe"), agent_spec.readiness())
    return generated, kept, own


def _drain(template: Mapping[str, Any], options: Options) -> Drain:
    """The pod template's sidecar-agent.io/drain annotation, else the option."""
    value = _mapping(_mapping(template, "metadata"), "annotations").get(DRAIN)
    if value is None:
        return options.drain
    try:
        return Drain(str(value).strip().lower())
    except ValueError:
        raise InjectError(f'metadata.annotations["{DRAIN}"]: expected one of '
                          f"{', '.join(d.value for d in Drain)}, got {str(value)[:40]!r}",
                          ("metadata", "annotations", DRAIN)) from None


# In _pre_stops' plan: the container has no hook, so it gets the agent's (made once its checks are known).
AGENT_HOOK: dict[str, Any] = {}


def _pre_stops(spec: Mapping[str, Any]) -> list[tuple[Path, dict[str, Any] | None, str | None]] | str:
    """Each app container's preStop hook to write (None: keep its own; AGENT_HOOK: the agent's) with a note, or why
    the pod cannot be injected."""
    planned: list[tuple[Path, dict[str, Any] | None, str | None]] = []
    for index, c in enumerate(spec["containers"]):
        base: Path = ("spec", "containers", index)
        hook = _mapping(c, "lifecycle").get("preStop")
        if hook is None:
            planned.append((base, AGENT_HOOK, None))
            continue
        plan = hooks.existing(hook if isinstance(hook, Mapping) else {})
        if plan.refuse:
            return f"container {c.get('name')}: {plan.refuse}"
        planned.append((base, plan.hook, f"container {c.get('name')}: {plan.note}" if plan.note else None))
    return planned


def _grace_period(edit: Editor, spec: Mapping[str, Any], drain: int, notes: list[str]) -> int:
    """terminationGracePeriodSeconds, raised to cover the drain and lint's margin when shorter, never lowered."""
    grace = spec.get("terminationGracePeriodSeconds")
    current = grace if isinstance(grace, int) and not isinstance(grace, bool) else DEFAULT_GRACE_PERIOD
    need = int(drain + GRACE_MARGIN_SECONDS)
    if current >= need:
        return current
    edit.set(("spec", "terminationGracePeriodSeconds"), need)
    notes.append(f"terminationGracePeriodSeconds raised from {current} to {need}: the drain ({drain}s) and a "
                 f"{GRACE_MARGIN_SECONDS:g}s margin")
    return need


def remove(template: Mapping[str, Any]) -> Outcome:
    """Take an injection back out, restoring the pod template as it was before."""
    result = plain(template)
    annotations = _mapping(result.get("metadata"), "annotations")
    text = annotations.get(STATUS)
    if text is None:
        return Outcome(result, False, [f"not injected ({STATUS} is not set): left as it is"])
    try:
        status = json.loads(str(text))
        record = status["edits"]
        if not isinstance(record, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise InjectError(f"{STATUS_WHERE}: not the record an injection writes", ("metadata", "annotations", STATUS)) from None
    del result["metadata"]["annotations"][STATUS]
    undo(result, record, STATUS_WHERE)
    return Outcome(result, True, [])
