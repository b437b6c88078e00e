"""The shutdown rules: preStop hooks, signal relay, the grace period, the drain, and the agent's config itself."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

from agent.config import ShutdownConfig, StopScope
from agent.kube.facts import GRACE_MARGIN_SECONDS, JOB_KINDS
from agent.lint.commands import sleeps_first, targets, wrapper
from agent.lint.context import NETWORK, Context, endpoint
from agent.lint.findings import Finding
from agent.lint.model import Container, Handler
from agent.lint.model import Probe as ProbeSpec
from agent.probes import HOOK_WINDOW, Probe


def _hook_fix(port: int) -> str:
    return (f"add lifecycle.preStop.httpGet {{path: /prestop, port: {port}}} with the header Authorization: Bearer "
            "<token> (the call comes from the node, so the agent needs admin.token_file or token_env), or an exec hook "
            f"running curl -fsS http://127.0.0.1:{port}/prestop (loopback needs no token)")


def prestop_missing(ctx: Context) -> Iterator[Finding]:
    """An app container without a preStop hook while the agent runs beside it."""
    if ctx.agent is None or ctx.agent.mode != "run" or ctx.workload.kind in JOB_KINDS:
        return
    for c in ctx.apps:
        if c.pre_stop is None:
            yield ctx.finding("prestop-missing", c, None,
                              "no preStop hook: on a rollout the kubelet sends this container SIGTERM at the moment the pod "
                              "starts leaving the Service endpoints, so requests still routed to it are dropped; the agent "
                              "orders the stop only when the hook waits on its /prestop", _hook_fix(ctx.agent.port))


def _drain(ctx: Context) -> float:
    """The agent's drain budget, or its default when the config could not be read."""
    config = ctx.agent.config if ctx.agent is not None else None
    return (config.shutdown if config is not None else ShutdownConfig()).drain_budget


def _agent_hears_at_once(ctx: Context) -> bool:
    """The agent learns of the pod's deletion at t=0: as a regular container from its SIGTERM; as a native sidecar
    (SIGTERM only after the app exits) from its own preStop hook calling its stop on loopback."""
    assert ctx.agent is not None
    c = ctx.agent.container
    if not c.sidecar:
        return True
    hook = c.pre_stop
    return (hook is not None and hook.type == "exec"
            and _agent_call(ctx, hook.command, ("prestop", "quitquitquit")) is not None)


def _calls_prestop(ctx: Context, c: Container, h: Handler) -> str | None:
    """None when the hook orders the container's SIGTERM after the drain; else what it does instead.

    Three hooks do: a call of /prestop on the agent; a call of /prestop/wait, which only waits for a sequence the agent
    started itself (see _agent_hears_at_once); and, when the agent relays no signal (the kubelet's SIGTERM is the
    app's stop signal), a sleep at least as long as the drain (a sleep action, or an exec hook whose first command
    sleeps), which holds that SIGTERM back.
    """
    assert ctx.agent is not None
    port = ctx.agent.port
    drain = _drain(ctx)
    config = ctx.agent.config
    sleep_orders = config is not None and not config.shutdown.relay_signal
    if h.type == "httpGet":
        resolved = c.resolve(h.port)
        if h.host:
            return f"sends its GET to {h.host}, not to this pod"
        if resolved is None:
            return None  # a name that does not resolve: probe-port-unresolved says so
        if resolved != port:
            return f"calls port {resolved}, not the agent's {port}"
        if endpoint(h.path) == "prestop/wait":
            if _agent_hears_at_once(ctx):
                return None
            return ("waits on /prestop/wait, but nothing starts the agent's stop: a native sidecar gets its SIGTERM only "
                    "after the app has exited, so the agent needs its own preStop hook (exec: sidecar-agent stop)")
        return None if endpoint(h.path) == "prestop" else f"calls {h.path} instead of /prestop"
    if h.type == "exec":
        if _agent_call(ctx, h.command, ("prestop",)) is not None:
            return None
        slept = sleeps_first(h.command) if sleep_orders else None
        if slept is not None and slept >= drain:
            return None
        if slept is not None:
            return f"sleeps {slept}s, less than the agent's drain ({drain:g}s)"
        return f"runs `{' '.join(h.command)[:60]}` instead of calling http://127.0.0.1:{port}/prestop"
    if h.type == "sleep":
        if not sleep_orders:
            return "only sleeps"
        if h.seconds is not None and h.seconds >= drain:
            return None
        return f"only sleeps {h.seconds}s, less than the agent's drain ({drain:g}s)"
    return f"uses {h.type or 'no action'}"


def prestop_wrong_target(ctx: Context) -> Iterator[Finding]:
    """A preStop hook that does not reach /prestop on the agent's port.

    Not in Jobs and CronJobs: their pods are no Service's endpoints and are not rolled out, so there is no drain for
    the app's SIGTERM to wait for, and the user's own hook (an httpGet to the app's port, a short sleep) does what it
    did without the agent; inject keeps it as it is and sets a drain of 0 s."""
    if ctx.agent is None or ctx.agent.mode != "run" or ctx.workload.kind in JOB_KINDS:
        return
    for c in ctx.apps:
        if c.pre_stop is None or c is ctx.agent.container:
            continue
        problem = _calls_prestop(ctx, c, c.pre_stop)
        if problem:
            yield ctx.finding("prestop-wrong-target", c, c.pre_stop.line,
                              f"the preStop hook {problem}: the agent does not hear of the stop from it, so the kubelet's "
                              "SIGTERM to the app is not ordered after the drain and requests in flight are dropped",
                              _hook_fix(ctx.agent.port))


def prestop_no_token(ctx: Context) -> Iterator[Finding]:
    """A preStop httpGet to /prestop that the agent refuses: no admin token configured, or no bearer header."""
    if ctx.agent is None or ctx.agent.config is None or ctx.agent.mode != "run":
        return
    admin = ctx.agent.config.admin
    for c in ctx.apps:
        h = c.pre_stop
        if h is None or h.type != "httpGet" or not ctx.to_agent(c, h) or endpoint(h.path) != "prestop":
            continue
        auth = h.header("Authorization") or ""
        if not (admin.token_file or admin.token_env):
            yield ctx.finding("prestop-no-token", c, h.line,
                              f"the agent's config ({ctx.agent.settings.origin}) sets no admin token, so the agent accepts "
                              "/prestop from loopback only; a preStop httpGet comes from the node and gets 403, and "
                              "nothing is ordered (the kubelet ignores the hook's status)",
                              "set admin.token_file (or admin.token_env) in the agent's config and send "
                              "Authorization: Bearer <token> in the hook's httpHeaders")
        elif "$(" in auth:
            yield ctx.finding("prestop-no-token", c, h.line,
                              "the hook's Authorization header uses $(VAR), which Kubernetes expands in command, args and "
                              "env but not in httpHeaders: the agent gets the literal text and answers 403",
                              "write the token itself in the header value, or use an exec hook: "
                              f"curl -fsS http://127.0.0.1:{ctx.agent.port}/prestop (loopback needs no token)")
        elif not auth.lower().startswith("bearer ") or not auth[7:].strip():
            yield ctx.finding("prestop-no-token", c, h.line,
                              "the agent requires a bearer token for /prestop from outside the pod, and this hook sends "
                              "none: it gets 401 and nothing is ordered (the kubelet ignores the hook's status)",
                              "add httpHeaders: [{name: Authorization, value: Bearer <token>}] to the hook")


def _agent_hook(ctx: Context, c: Container, h: Handler) -> str | None:
    """The path (with its query) of a hook's call of /prestop or /prestop/wait on the agent, else None."""
    assert ctx.agent is not None
    if h.type == "httpGet":
        return h.path if ctx.to_agent(c, h) and endpoint(h.path) in ("prestop", "prestop/wait") else None
    if h.type == "exec":
        return _agent_call(ctx, h.command, ("prestop", "prestop/wait"))
    return None


def _agent_call(ctx: Context, command: Sequence[str], endpoints: Sequence[str]) -> str | None:
    """The path (with its query) of an exec command's first call of one of `endpoints` on this agent's loopback port."""
    assert ctx.agent is not None
    port = ctx.agent.port
    return next((t.path for t in targets(command)
                 if not t.host and t.port == port and t.path and endpoint(t.path) in endpoints), None)


def _restart_seen(ctx: Context, c: Container, probe: ProbeSpec, named: list[str]) -> bool:
    """Whether the agent sees this liveness or startup probe fail: it asks the agent, on the path the hook names
    (`/livez/NAME` with `?check=NAME`; `/livez` or `/startupz` with no `check`). A probe that another rule already
    sends elsewhere (another endpoint of the agent, a port that does not resolve) counts as seen: that fix comes first."""
    h = probe.handler
    if h.type in NETWORK and not h.host and c.resolve(h.port) is None:
        return True  # probe-port-unresolved
    if not ctx.to_agent(c, h):
        return False
    if h.type != "httpGet" or endpoint(h.path) not in ("livez", "startupz"):
        return True  # probe-wrong-endpoint, liveness-dependency
    bare = h.path.split("?", 1)[0].strip("/")
    _, _, name = bare.partition("/")
    return name in named if name else not named


def prestop_restart_unseen(ctx: Context) -> Iterator[Finding]:
    """A hook on the agent that the kubelet also runs for a probe kill the agent does not see (docs/shutdown.md)."""
    if ctx.agent is None or ctx.agent.mode != "run":
        return
    for c in ctx.apps:
        h = c.pre_stop
        if h is None or c is ctx.agent.container:
            continue
        path = _agent_hook(ctx, c, h)
        if path is None:
            continue
        named = parse_qs(urlsplit(path).query).get("check", [])
        unseen = [kind for kind, probe in c.probes.items()
                  if kind in (Probe.LIVENESS, Probe.STARTUP) and not _restart_seen(ctx, c, probe, named)]
        if not unseen:
            continue
        what = " or ".join(f"{kind} probe" for kind in unseen)
        fix = (f"point the {what} at the agent (its check's /livez/NAME or /startupz/NAME) and name the checks in the "
               "hook: ?check=NAME for each")
        if endpoint(path) == "prestop":
            yield ctx.finding("prestop-restart-stops-agent", c, h.line,
                              f"when the kubelet restarts this container for a failed {what}, it runs this hook, and "
                              "the agent, not seeing that probe fail, takes it for a pod stop: readiness fails for the "
                              "whole pod, the drain runs and the agent exits (and with relay_signal, stops the app)",
                              fix + "; or let the agent hear the stop from its own SIGTERM and make this hook wait on "
                              "/prestop/wait")
        else:
            yield ctx.finding("prestop-restart-held", c, h.line,
                              f"when the kubelet restarts this container for a failed {what}, it runs this hook, and "
                              f"the agent, not seeing that probe fail, holds it until no stop has begun within "
                              f"{HOOK_WINDOW:g}s: the restart waits that long", fix)


def relay_without_shared_pid(ctx: Context) -> Iterator[Finding]:
    """The agent must see the app (signal relay, process checks) but cannot: no shared PID namespace, no exec mode."""
    agent = ctx.agent
    if agent is None or agent.config is None or agent.mode != "run" or ctx.pod.share_process_namespace:
        return
    config = agent.config
    if config.app.match is None:
        return
    uses, effects = [], []
    if config.shutdown.relay_signal:
        uses.append(f"to relay {config.shutdown.stop_signal} on shutdown")
        effects.append(f"{config.shutdown.stop_signal} is never relayed and stop_timeout never applies")
    process = [c for c in config.checks if c.type == "process"]
    if process:
        names = ", ".join(c.name for c in process)
        uses.append(f"to watch it in process checks ({names})")
        live = any(Probe.LIVENESS in c.probes for c in process)
        effects.append(f"{names} always fail" + (", and under liveness they restart the app over and over" if live else ""))
    if uses:
        yield ctx.finding("relay-without-shared-pid", agent.container, None,
                          f"the agent's config finds the app with app.match ({' and '.join(uses)}), but the pod does not "
                          "share its process namespace and the agent does not run the app (exec mode), so the agent cannot "
                          f"see it: {'; '.join(effects)}",
                          "set shareProcessNamespace: true in the pod spec, or run the app under the agent in one "
                          "container: sidecar-agent exec -- CMD")


def agent_cannot_signal(ctx: Context) -> Iterator[Finding]:
    """The agent relays the stop signal but runs as another user than the app, without CAP_KILL."""
    agent = ctx.agent
    if agent is None or agent.config is None or agent.mode != "run" or not ctx.pod.share_process_namespace:
        return
    if agent.config.app.match is None or not agent.config.shutdown.relay_signal:
        return
    uid = ctx.pod.user_of(agent.container)
    c_agent = agent.container
    # Root keeps KILL unless it is dropped (and not added back). A non-root process gets no ambient capabilities
    # from the runtime, so capabilities.add: [KILL] never becomes effective for it.
    can_kill = uid == 0 and ("KILL" in c_agent.caps_add or not {"ALL", "KILL"} & c_agent.caps_drop)
    for c in ctx.apps:
        app_uid = ctx.pod.user_of(c)
        if c is c_agent or uid is None or app_uid is None or uid == app_uid or can_kill:
            continue
        why = ("its capabilities.add: [KILL] is not effective for a non-root user (no ambient capabilities)"
               if "KILL" in c_agent.caps_add else "it lacks the KILL capability")
        yield ctx.finding("agent-cannot-signal", c_agent, None,
                          f"the agent runs as user {uid} and the app ({c.name}) as user {app_uid}, and {why}: the kernel "
                          f"refuses its {agent.config.shutdown.stop_signal} (and the SIGKILL after stop_timeout), so the "
                          "app is stopped only by the kubelet",
                          "run both containers as the same user (securityContext.runAsUser), or run the agent as root "
                          "with only KILL (runAsUser: 0, capabilities: {drop: [ALL], add: [KILL]})")


EXEC_FIX = ("start the app with exec as the script's last command (exec python app.py), or use the exec form of the "
            "command (command: [python, app.py], or CMD [\"python\", \"app.py\"] in the Dockerfile)")
WRAPPER_FIX = EXEC_FIX + ", or run the app under the agent in one container (sidecar-agent exec -- ...)"


def app_behind_shell(ctx: Context) -> Iterator[Finding]:
    """An app started through sh -c, a shell script or a launcher while the agent relays its stop signal."""
    agent = ctx.agent
    if agent is None or agent.config is None:
        return
    shutdown = agent.config.shutdown
    if agent.mode == "exec":
        words = [*agent.container.command, *agent.container.args]
        argv = words[words.index("--") + 1:] if "--" in words else []
        how = wrapper(argv)
        if how and shutdown.stop_scope is StopScope.PROCESS:
            yield ctx.finding("app-behind-shell", agent.container, None,
                              f"{how}, and stop_scope: process sends {shutdown.stop_signal} to it alone: the app never "
                              f"gets it and is SIGKILLed after stop_timeout {shutdown.stop_timeout:g}s, its requests in "
                              "flight lost", "remove stop_scope: process (the default, group, reaches the app), or " + EXEC_FIX)
        return
    if not shutdown.relay_signal or agent.config.app.match is None:
        return  # the agent relays no signal: nothing of its own is lost to the wrapper
    for c in ctx.apps:
        if c is agent.container:
            continue
        how = wrapper([*c.command, *c.args])
        if how is None:
            continue
        reach = ("the agent reaches the app only through its process group (stop_scope: group), and"
                 if shutdown.stop_scope is StopScope.GROUP else
                 f"with stop_scope: process the agent's {shutdown.stop_signal} reaches only that wrapper, and")
        yield ctx.finding("app-behind-shell", c, None,
                          f"{how}: the wrapper is the container's PID 1, so {reach} the kubelet's own SIGTERM (when the "
                          "agent cannot signal, or at the end of the grace period) stops the wrapper, not the app, "
                          "which is then SIGKILLed with its requests in flight", WRAPPER_FIX)


def grace_period_too_short(ctx: Context) -> Iterator[Finding]:
    """terminationGracePeriodSeconds below the agent's shutdown budget plus a margin."""
    agent = ctx.agent
    if agent is None or agent.config is None:
        return
    shutdown = agent.config.shutdown
    need = shutdown.budget + GRACE_MARGIN_SECONDS
    grace = ctx.pod.grace_period
    if grace >= need:
        return
    parts = f"drain {shutdown.drain_budget:g}s" + (f" + stop_timeout {shutdown.stop_timeout:g}s" if shutdown.relay_signal else "")
    yield ctx.finding("grace-period-too-short", None, ctx.pod.grace_line or ctx.pod.line,
                      f"terminationGracePeriodSeconds is {grace}s, but the agent's shutdown takes up to "
                      f"{shutdown.budget:g}s ({parts}) plus about {GRACE_MARGIN_SECONDS:g}s to finish: the kubelet "
                      "SIGKILLs the pod in the middle of it",
                      f"set terminationGracePeriodSeconds: {math.ceil(need)} or more (and shutdown.grace_period to match), "
                      "or shorten shutdown.drain_delay or stop_timeout")


def drain_shorter_than_readiness(ctx: Context) -> Iterator[Finding]:
    """drain_delay shorter than the time the kubelet needs to see readiness fail."""
    agent = ctx.agent
    if agent is None or agent.config is None or ctx.workload.kind in JOB_KINDS:
        return
    drain = agent.config.shutdown.drain_delay
    for c in ctx.apps:
        ready = c.probes.get(Probe.READINESS)
        if ready is None or not ctx.to_agent(c, ready.handler):
            continue
        window = ready.period * ready.failure
        if drain >= window:
            continue
        yield ctx.finding("drain-shorter-than-readiness", c, ready.line,
                          f"shutdown.drain_delay is {drain:g}s, but the kubelet needs up to {window}s (readiness "
                          f"periodSeconds {ready.period} x failureThreshold {ready.failure}) to see the agent's readiness "
                          "fail: the app is signalled while the Service may still route to it",
                          f"set shutdown.drain_delay to at least {window}s plus the time endpoints take to propagate "
                          f"(5s is a common floor: {window + 5}s), or probe readiness more often")


def agent_config(ctx: Context) -> Iterator[Finding]:
    """The agent's config does not load, or could not be found in the files given."""
    agent = ctx.agent
    if agent is None:
        return
    settings = agent.settings
    for problem in settings.problems:
        yield ctx.finding("agent-config-invalid", agent.container, None,
                          f"the agent's config ({settings.origin}) does not load: {problem}; the agent exits with code 2",
                          "fix the config; `sidecar-agent check-config FILE` lists every problem")
    if settings.missing:
        yield ctx.finding("agent-config-not-found", agent.container, None,
                          f"the agent reads its config from {settings.origin}, but {settings.missing}: the rules that "
                          "need it (grace period, drain, token, relay) were skipped",
                          "lint the file holding that ConfigMap too, or pass --agent-config FILE")


RULES = (prestop_missing, prestop_wrong_target, prestop_no_token, prestop_restart_unseen, relay_without_shared_pid,
         agent_cannot_signal,
         app_behind_shell, grace_period_too_short, drain_shorter_than_readiness, agent_config)
