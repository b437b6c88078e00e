"""The config: YAML text and an environment in, frozen typed objects out, or every error with its key path."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent import checks
from agent.checkapi import CheckSpec
from agent.fields import (
    ENV_VAR,
    Address,
    Bool,
    ConfigError,
    Duration,
    Enum,
    Field,
    Invalid,
    Kind,
    ListOf,
    Number,
    Problems,
    Regex,
    Section,
    SignalName,
    Str,
    describe,
    dump_fields,
    join,
    object_schema,
    optional,
    parse_mapping,
    with_defaults,
)
from agent.kube.facts import AGENT_PORT, DEFAULT_GRACE_PERIOD
from agent.logs import LogFormat, LogLevel
from agent.probes import NAMES as PROBE_NAMES
from agent.probes import Probe
from agent.yamlread import YamlError, read_document

__all__ = ["DEFAULT_CONFIG", "CheckSpec", "Config", "ConfigError", "dump", "json_schema", "load", "load_tree"]

CHECK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# The config as text in the environment (an injected agent container carries it there: no ConfigMap needed).
CONFIG_TEXT_ENV = "SIDECAR_AGENT_CONFIG_YAML"
# Every address of the pod: the kubelet probes the pod IP, IPv4 or IPv6. The server makes `::` dual-stack (IPv6-only
# off) and falls back to 0.0.0.0 where the kernel has no IPv6 (agent.runtime.server).
ANY_HOST = "::"
DEFAULT_LISTEN = (ANY_HOST, AGENT_PORT)
DEFAULT_CONFIG = """\
# The embedded default: serve on every address, IPv4 and IPv6, no checks, so alive and ready at once.
listen: "[::]:8686"
log: {level: info, format: json}
checks: {}
"""


@dataclass(frozen=True)
class LogConfig:
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.JSON


@dataclass(frozen=True)
class AdminConfig:
    token_file: str | None = None
    token_env: str | None = None
    token: str | None = None  # the value of token_env, read from the environment given to the loader


@dataclass(frozen=True)
class AppMatch:
    pidfile: str | None = None
    name: str | None = None
    cmdline: str | None = None
    other_containers: bool | None = None  # true: the pod's other containers, in a shared process namespace


@dataclass(frozen=True)
class AppConfig:
    match: AppMatch | None = None
    exit_with_app: bool = False


class StopScope(enum.StrEnum):
    """Whom the stop signal (and the final SIGKILL) reaches."""

    GROUP = "group"  # the app's process group (in run mode only when no process of the agent's own container is in it)
    PROCESS = "process"  # the app alone


@dataclass(frozen=True)
class DrainConnections:
    port: int
    timeout: float


class EndpointsMode(enum.Enum):
    """shutdown.endpoints.enabled: when the drain follows the pod's EndpointSlices."""

    AUTO = "auto"  # when the pod has in-cluster credentials and its identity from the downward API
    ON = "true"  # always tried; a lack is a warning, and the drain falls back to the timer
    OFF = "false"


@dataclass(frozen=True)
class EndpointsConfig:
    enabled: EndpointsMode = EndpointsMode.AUTO
    min: float = 1.0
    margin: float = 1.0


@dataclass(frozen=True)
class ShutdownConfig:
    drain_delay: float = 5.0
    relay_signal: bool = True
    stop_signal: str = "SIGTERM"
    stop_timeout: float = 20.0
    stop_scope: StopScope = StopScope.GROUP
    drain_connections: DrainConnections | None = None
    grace_period: float = float(DEFAULT_GRACE_PERIOD)
    endpoints: EndpointsConfig | None = None  # absent: the drain is the timer alone

    @property
    def follows_endpoints(self) -> bool:
        """Whether the config asks for the drain to follow the EndpointSlices (credentials permitting)."""
        return self.endpoints is not None and self.endpoints.enabled is not EndpointsMode.OFF

    @property
    def drain_budget(self) -> float:
        """The longest the draining phase can last: the connection wait runs beside the delay."""
        conns = self.drain_connections.timeout if self.drain_connections else 0.0
        return max(self.drain_delay, conns)

    @property
    def budget(self) -> float:
        """The longest the whole sequence can take before the agent exits."""
        return self.drain_budget + (self.stop_timeout if self.relay_signal else 0.0)


@dataclass(frozen=True)
class AgentLimits:
    max_loop_lag: float = 2.0
    max_concurrent_exec: int = 8


@dataclass(frozen=True)
class Config:
    listen: tuple[str, int] = DEFAULT_LISTEN
    log: LogConfig = LogConfig()
    admin: AdminConfig = AdminConfig()
    app: AppConfig = AppConfig()
    checks: tuple[CheckSpec[object], ...] = ()
    shutdown: ShutdownConfig = ShutdownConfig()
    agent: AgentLimits = AgentLimits()
    secrets: frozenset[str] = frozenset()


class CheckTypeName(Kind):
    """The `type` of a check: a name the registry knows, asked when first needed (not at import)."""

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if isinstance(value, str) and checks.is_known(value):  # a built-in name needs no look at the plug-ins
            return value
        return Enum(checks.type_names()).parse(value, path, problems)

    def schema(self) -> dict[str, Any]:
        return Enum(checks.type_names()).schema()


LOG = Section([Field("level", Enum(LogLevel, ignore_case=True),
                     doc="the least severe level logged"),
               Field("format", Enum(LogFormat), doc="json: one object a line, to stdout; text: for people")],
              LogConfig)
ADMIN = Section([optional("token_file", Str(), "file holding the bearer token for admin calls"),
                 optional("token_env", Str(), "environment variable holding the bearer token")], AdminConfig)
MATCH = Section([optional("pidfile", Str(), "file holding the app's pid"),
                 optional("name", Str(), "the app's process name"),
                 optional("cmdline", Regex(), "regex searched in the app's command line"),
                 optional("other_containers", Bool(), "true: the processes of the pod's other containers (shared process "
                          "namespace), for a pod spec that names no command")],
                AppMatch, one_of=("pidfile", "name", "cmdline", "other_containers"),
                check=lambda match, path, problems: problems.add(f"{path}.other_containers", "only true means anything; "
                                                                 "leave it out otherwise")
                if match.other_containers is False else None)
APP = Section([optional("match", MATCH, "how to find the app process: exactly one of pidfile, name, cmdline, "
                        "other_containers"),
               Field("exit_with_app", Bool(), doc="exit when the app exits (Jobs)")], AppConfig)
DRAIN_CONNECTIONS = Section([Field("port", Number(integer=True, minimum=1, maximum=65535), doc="the app's serving port"),
                             Field("timeout", Duration(positive=True), doc="the longest to wait for its connections")],
                            DrainConnections)
class Switch(Kind):
    """true, false or auto (YAML's booleans or their text)."""

    def shape(self) -> str:
        return "`true`, `false` or `auto`"

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if isinstance(value, bool):
            return EndpointsMode.ON if value else EndpointsMode.OFF
        if isinstance(value, str) and value.lower() in {m.value for m in EndpointsMode}:
            return EndpointsMode(value.lower())
        raise Invalid(f"expected true, false or auto, got {describe(value)}")

    def dump(self, value: Any) -> Any:
        return {EndpointsMode.ON: True, EndpointsMode.OFF: False}.get(value, "auto")

    def schema(self) -> dict[str, Any]:
        return {"type": ["boolean", "string"], "enum": [True, False, "true", "false", "auto"]}


ENDPOINTS = Section([
    Field("enabled", Switch(),
          doc="auto: on when the pod has a service-account token and POD_NAMESPACE with POD_NAME or POD_IPS (the "
          "downward API), else the timer; true: always tried, a lack is a warning; false: the timer"),
    Field("min", Duration(), doc="the drain never ends sooner, whatever the EndpointSlices show"),
    Field("margin", Duration(), doc="how long after the API shows the pod out of every slice the drain ends "
          "(kube-proxy and ingress controllers still programming their rules)"),
], EndpointsConfig)
SHUTDOWN = Section([
    Field("drain_delay", Duration(), doc="how long readiness fails before the app is signalled"),
    Field("relay_signal", Bool(), doc="send stop_signal to the app after draining"),
    Field("stop_signal", SignalName(), doc="the signal relayed to the app"),
    Field("stop_timeout", Duration(positive=True), doc="how long the app may take to exit before SIGKILL"),
    Field("stop_scope", Enum(StopScope),
          doc="group: the stop signal reaches the app's process group (in run mode only when no process of the agent's own "
          "container is in it); process: the app alone. At stop_timeout whatever is left of the app's tree is SIGKILLed "
          "either way"),
    optional("drain_connections", DRAIN_CONNECTIONS,
             "also wait, during the drain, until the app's established connections on port reach zero (idle "
             "keep-alive connections of a client's pool count)"),
    Field("grace_period", Duration(positive=True),
          doc="the pod's terminationGracePeriodSeconds: a longer shutdown budget is refused"),
    optional("endpoints", ENDPOINTS,
             "end the drain once the pod has left its Services' EndpointSlices (never before min, never after "
             "drain_delay); needs RBAC to list and watch endpointslices, see docs/shutdown.md"),
], ShutdownConfig)
AGENT = Section([
    Field("max_loop_lag", Duration(positive=True), doc="/agent/livez fails when the event loop lags more than this"),
    Field("max_concurrent_exec", Number(integer=True, minimum=1, maximum=256), doc="exec checks running at once"),
], AgentLimits)
COMMON = (
    Field("type", CheckTypeName(), doc="the check type: a built-in one or a plug-in's"),
    Field("probes", ListOf(Enum(PROBE_NAMES), unique=True),
          ("readiness",), "which probes this check feeds; [] feeds only metrics and /status"),
    Field("interval", Duration(positive=True), 10.0, "time between runs"),
    Field("timeout", Duration(positive=True), 1.0, "a run that takes longer is cancelled and counts as a timeout"),
    Field("initial_delay", Duration(), 0.0, "wait before the first run"),
    Field("failure_threshold", Number(integer=True, minimum=1), 3, "failed runs in a row before the check fails"),
    Field("success_threshold", Number(integer=True, minimum=1), 1, "passing runs in a row before it passes again"),
    Field("allow_in_liveness", Bool(), False, "permit a dependency check under liveness"),
)
# The top level's defaults are Config's: a missing section is its dataclass with no arguments, as `section: {}` is.
TOP = with_defaults((
    Field("listen", Address(default_host=ANY_HOST), doc="address of the one listener: host:port, "
          "[IPv6]:port or :port (every address); `[::]` is dual-stack, with 0.0.0.0 where the kernel has no IPv6"),
    Field("log", LOG),
    Field("admin", ADMIN),
    Field("app", APP),
    Field("shutdown", SHUTDOWN),
    Field("agent", AGENT),
), Config)


def _expand(value: Any, path: str, env: Mapping[str, str], problems: Problems,
            done: dict[int, Any] | None = None) -> Any:
    """Expand ${VAR} and ${VAR:-default} in every string value; `$$` is a literal `$`.

    A YAML alias is one shared object: it is expanded once (`done`), so nested aliases cannot blow up.
    """
    done = {} if done is None else done
    if isinstance(value, (dict, list)) and id(value) in done:
        return done[id(value)]
    if isinstance(value, dict):
        mapping: dict[Any, Any] = {}
        done[id(value)] = mapping
        mapping.update({k: _expand(v, join(path, k), env, problems, done) for k, v in value.items()})
        return mapping
    if isinstance(value, list):
        items: list[Any] = []
        done[id(value)] = items
        items.extend(_expand(v, f"{path}[{i}]", env, problems, done) for i, v in enumerate(value))
        return items
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.add(path, f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)")
        return ""

    return ENV_VAR.sub(substitute, value)


def parse_yaml(data: bytes | str) -> Any:
    """The YAML document (plain dicts and lists), or a ConfigError naming the line."""
    try:
        return read_document(data, lines=False)
    except YamlError as exc:
        raise ConfigError([("", str(exc))]) from None


def load(data: bytes | str, env: Mapping[str, str], *, app_is_child: bool = False) -> Config:
    """Parse and validate a config; raise ConfigError listing every problem with its key path."""
    return load_tree(parse_yaml(data), env, app_is_child=app_is_child)


def load_tree(tree: Any, env: Mapping[str, str], *, app_is_child: bool = False) -> Config:
    """Validate a config already read from YAML (plain dicts, lists and YAML's scalars), as `load` does its text."""
    problems = Problems()
    if tree is None:
        tree = {}
    tree = _expand(tree, "", env, problems)
    problems.raise_if_any()
    if not isinstance(tree, dict):
        raise ConfigError([("", f"expected a mapping of keys (listen, checks, ...), got {describe(tree)}")])
    values = parse_mapping(tree, TOP, "", problems, extra_ok=("checks",), partial=True)
    assert values is not None
    admin: AdminConfig = values["admin"] or AdminConfig()
    if admin.token_file and admin.token_env:
        problems.add("admin", "set token_file or token_env, not both")
    if admin.token_env:
        token = env.get(admin.token_env, "")
        if not token:
            problems.add("admin.token_env", f"environment variable {admin.token_env} is not set or empty")
        problems.secrets.add(token)
        admin = AdminConfig(token_env=admin.token_env, token=token)
    app: AppConfig = values["app"] or AppConfig()
    shutdown: ShutdownConfig = values["shutdown"] or ShutdownConfig()
    specs = _parse_checks(tree.get("checks"), app, app_is_child, problems)
    if values["shutdown"] is not None and shutdown.budget > shutdown.grace_period:
        parts = f"drain {shutdown.drain_budget:g}s"
        if shutdown.relay_signal:
            parts += f" + stop_timeout {shutdown.stop_timeout:g}s"
        problems.add("shutdown.grace_period",
                     f"the shutdown budget ({parts} = {shutdown.budget:g}s) is longer than grace_period "
                     f"{shutdown.grace_period:g}s: the kubelet would SIGKILL the pod mid-sequence")
    if shutdown.endpoints is not None and shutdown.endpoints.min > shutdown.drain_delay:
        problems.add("shutdown.endpoints.min", f"min {shutdown.endpoints.min:g}s is longer than drain_delay "
                     f"{shutdown.drain_delay:g}s, which stays the longest drain")
    problems.raise_if_any()
    return Config(listen=values["listen"], log=values["log"], admin=admin, app=app,
                  checks=tuple(specs), shutdown=shutdown, agent=values["agent"],
                  secrets=frozenset(s for s in problems.secrets if s))


def _parse_checks(raw: Any, app: AppConfig, app_is_child: bool, problems: Problems) -> list[CheckSpec[object]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        problems.add("checks", f"expected a mapping of check names to checks, got {describe(raw)}")
        return []
    specs = []
    for name, body in raw.items():
        path = join("checks", name)
        if not CHECK_NAME.match(name):
            problems.add(path, "a check name is 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
            continue
        spec = _parse_check(name, body, path, problems)
        if spec is None:
            continue
        if spec.type == "process" and app.match is None and not app_is_child:
            problems.add(path, "a process check needs app.match (pidfile, name or cmdline) to find the app")
        specs.append(spec)
    return specs


def _parse_check(name: str, body: Any, path: str, problems: Problems) -> CheckSpec[object] | None:
    if not isinstance(body, dict):
        problems.add(path, f"expected a mapping with at least 'type', got {describe(body)}")
        return None
    type_name = body.get("type")
    if type_name is None:
        problems.add(join(path, "type"), f"required key is missing (one of {', '.join(checks.type_names())})")
        return None
    if not isinstance(type_name, str) or not checks.is_known(type_name):
        import difflib  # only for a mistake: it costs memory otherwise

        close = difflib.get_close_matches(str(type_name), checks.type_names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known types: {', '.join(checks.type_names())}"
        problems.add(join(path, "type"), f"unknown check type {describe(type_name)}{hint}")
        return None
    check_type = checks.load_type(type_name)
    missing = checks.missing_requirement(check_type)
    if missing:
        problems.add(join(path, "type"), missing)
        return None
    values = parse_mapping(body, (*COMMON, *check_type.fields), path, problems)
    if values is None:
        return None
    params = check_type.params(**{f.name: values[f.name] for f in check_type.fields})
    error = check_type.validate(params)
    if error:
        problems.add(path, error)
        return None
    probes = values["probes"]
    if Probe.LIVENESS in probes and not values["allow_in_liveness"] and check_type.is_dependency(params):
        problems.add(join(path, "probes"),
                     f"a {type_name} check of a dependency under liveness restarts the app whenever the dependency "
                     "blips (a restart storm); keep it in readiness, or set allow_in_liveness: true")
        return None
    common = {f.name: values[f.name] for f in COMMON}
    return CheckSpec(name=name, params=params, **common)


def dump(config: Config) -> dict[str, Any]:
    """The normalised config with every secret redacted, as check-config prints it."""
    out = dump_fields(config, [f for f in TOP if f.name not in ("shutdown", "agent")])
    out["checks"] = {}
    for spec in config.checks:
        check_type = checks.load_type(spec.type)
        body = dump_fields(spec, COMMON)
        body.update(dump_fields(spec.params, check_type.fields))
        out["checks"][spec.name] = body
    out["shutdown"] = SHUTDOWN.dump(config.shutdown)
    out["agent"] = AGENT.dump(config.agent)
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of what `load` accepts."""
    variants = []
    for type_name in checks.type_names():
        check_type = checks.load_type(type_name)
        schema = object_schema((*COMMON, *check_type.fields))
        schema["properties"]["type"] = {"const": type_name}
        schema["required"] = sorted(set(schema.get("required", [])) | {"type"})
        variants.append(schema)
    top = object_schema(TOP, extra={
        "checks": {"type": ["object", "null"], "propertyNames": {"pattern": CHECK_NAME.pattern},
                   "additionalProperties": {"oneOf": variants}},
    })
    top["required"] = []
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "sidecar-agent config", **top}
