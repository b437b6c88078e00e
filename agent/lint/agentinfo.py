"""Finding the agent in a pod: its container, its mode, its port, and its config (given, or from a ConfigMap)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import yaml

from agent import checks
from agent.config import CONFIG_TEXT_ENV, DEFAULT_CONFIG, Config, ConfigError, load, parse_yaml
from agent.fields import env_references
from agent.kube import kubelet_env
from agent.kube.facts import AGENT_PORT
from agent.lint.commands import option, simple_commands
from agent.lint.model import Container, DataObject, Pod, Workload
from agent.units import parse_address

AGENT_NAME = "sidecar-agent"
DEFAULT_PORT = AGENT_PORT
DAEMONS = ("run", "exec")
PLACEHOLDER = "lint-placeholder"


@dataclass(frozen=True)
class AgentConfig:
    """The agent's config as far as it could be read; `config` is None when it could not."""

    config: Config | None
    origin: str  # "the embedded default", a file, or "ConfigMap/NAME key KEY"
    problems: tuple[str, ...] = ()  # `key.path: message`, when it does not load
    missing: str | None = None  # why it could not be found
    unchecked: tuple[str, ...] = ()  # checks left out: they depend on environment values not in the manifests


@dataclass(frozen=True)
class Agent:
    container: Container
    mode: str  # run or exec
    port: int
    settings: AgentConfig

    @property
    def config(self) -> Config | None:
        return self.settings.config


def image_is_agent(image: str) -> bool:
    """An image whose repository's last component names the agent (`ghcr.io/acme/sidecar-agent:1.2`)."""
    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    return AGENT_NAME in last.split(":", 1)[0]


def _expand(words: Sequence[str], env: Mapping[str, str | None]) -> list[str]:
    """The kubelet's expansion of command and args (`$$`, `$(VAR)`), for the variables set literally."""
    return [kubelet_env.expand(word, env.get) for word in words]


def agent_arguments(container: Container) -> tuple[str, list[str]] | None:
    """(subcommand, its arguments) when the container runs the agent's daemon (`run` or `exec`), else None."""
    argv = _expand([*container.command, *container.args], container.env)
    rest: list[str] | None = None
    for command in simple_commands(argv):
        for i, word in enumerate(command):
            base = posixpath.basename(word)
            if base == AGENT_NAME:
                rest = command[i + 1:]
            elif re.match(r"python[0-9.]*$", base) and command[i + 1:i + 3] == ["-m", "agent"]:
                rest = command[i + 3:]
            if rest is not None:
                break
        if rest is not None:
            break
    if rest is None:
        if not image_is_agent(container.image):
            return None
        rest = list(argv) if not container.command else []  # the image's entrypoint is the agent
    sub = rest[0] if rest and not rest[0].startswith("-") else "run"
    if sub not in DAEMONS:
        return None
    return sub, rest[1:] if rest and rest[0] == sub else rest


def find_agent_container(pod: Pod) -> tuple[Container, str, list[str]] | None:
    """The first container (native sidecars first) that runs the agent's daemon, its mode and its arguments."""
    for container in pod.running:
        found = agent_arguments(container)
        if found:
            return container, found[0], found[1]
    return None


def _candidates(workload: Workload, container: Container, path: str) -> Iterator[tuple[str, str, str]]:
    """(kind, object name, key) of every ConfigMap or Secret key that the pod mounts at `path` in the container."""
    for mount in container.mounts:
        mount_path = mount.path.rstrip("/")
        if mount.sub_path:
            if path != mount.path:
                continue
            rel = mount.sub_path
        elif path.startswith(mount_path + "/"):
            rel = path[len(mount_path) + 1:]
        else:
            continue
        for source in workload.pod.volumes.get(mount.volume, ()):
            if source.items is None:
                if "/" not in rel:
                    yield source.kind, source.name, rel
            else:
                yield from ((source.kind, source.name, key) for key, item_path in source.items if item_path == rel)


def _text_at(workload: Workload, container: Container, path: str, objects: Sequence[DataObject]) -> tuple[str, str] | None:
    for kind, name, key in _candidates(workload, container, path):
        for obj in objects:
            if obj.kind == kind and obj.name == name and key in obj.data and \
                    (obj.namespace is None or workload.namespace is None or obj.namespace == workload.namespace):
                return f"{kind}/{name} key {key}", obj.data[key]
    return None


class _Env(dict[str, str]):
    """An environment where `${VAR}` reads the value given; `admin.token_env` reads any name as set."""

    def __missing__(self, key: str) -> str:
        return PLACEHOLDER

    def get(self, key: str, default: str | None = None) -> str:  # type: ignore[override]
        return self[key]


def load_permissive(text: str, env: Mapping[str, str | None], *, app_is_child: bool, origin: str) -> AgentConfig:
    """Load a config with the container's literal env values; any other variable reads as a placeholder.

    A check that fails to load only because of a placeholder, or whose client library is not installed where the
    lint runs (the agent's image has it), is left out rather than reported.
    """
    try:
        tree = parse_yaml(text)
    except ConfigError as exc:
        return AgentConfig(None, origin, tuple(_join(p, m) for p, m in exc.problems))
    known = {k: v for k, v in env.items() if v is not None}
    guessed = {name for name, default in env_references(text) if default is None and name not in known}
    values = _Env({**known, **dict.fromkeys(guessed, PLACEHOLDER)})
    found = tree.get("checks") if isinstance(tree, dict) else None
    raw_checks: dict[str, object] = found if isinstance(found, dict) else {}
    left_out = {name for name, body in raw_checks.items() if checks.not_installed(body)}
    tainted: set[str] = set()
    for _ in range(2):  # at most once more, without the checks that only a placeholder broke
        keep = {k: v for k, v in raw_checks.items() if k not in left_out | tainted}
        source = text if len(keep) == len(raw_checks) else yaml.safe_dump({**tree, "checks": keep}, sort_keys=False)
        try:
            config = load(source, values, app_is_child=app_is_child)
        except ConfigError as exc:
            real = []
            for path, message in exc.problems:
                name = next((n for n in keep if path == f"checks.{n}" or path.startswith(f"checks.{n}.")), None)
                if name is not None and guessed & {v for v, _ in env_references(yaml.safe_dump(keep[name]))}:
                    tainted.add(name)
                else:
                    real.append(_join(path, message))
            if real or not tainted:
                return AgentConfig(None, origin, tuple(real))
            continue
        return AgentConfig(config, origin, unchecked=tuple(sorted(left_out | tainted)))
    return AgentConfig(None, origin, missing="it depends on environment values that are not in the manifests")


def _join(path: str, message: str) -> str:
    return f"{path}: {message}" if path else message


def find_agent(workload: Workload, objects: Sequence[DataObject], given: tuple[str, str] | None = None) -> Agent | None:
    """The agent of a workload, with its config: `given` ((origin, text), from --agent-config), else the ConfigMap or
    Secret mounted where its --config (or SIDECAR_AGENT_CONFIG) points, else the text of SIDECAR_AGENT_CONFIG_YAML (an
    injected pod's), else the embedded default."""
    found = find_agent_container(workload.pod)
    if found is None:
        return None
    container, mode, args = found
    path = option(args, ("--config",)) or container.env.get("SIDECAR_AGENT_CONFIG")
    if given is not None:
        settings = load_permissive(given[1], container.env, app_is_child=mode == "exec", origin=given[0])
    elif "SIDECAR_AGENT_CONFIG" in container.env and container.env["SIDECAR_AGENT_CONFIG"] is None and path is None:
        settings = AgentConfig(None, "SIDECAR_AGENT_CONFIG", missing="SIDECAR_AGENT_CONFIG is set from a Secret or a field")
    elif path is None and CONFIG_TEXT_ENV in container.env:
        text = container.env[CONFIG_TEXT_ENV]
        if text is None:
            settings = AgentConfig(None, CONFIG_TEXT_ENV, missing=f"{CONFIG_TEXT_ENV} is set from a Secret or a field")
        else:
            settings = load_permissive(kubelet_env.expand(text, container.env.get), container.env,
                                       app_is_child=mode == "exec", origin=f"env {CONFIG_TEXT_ENV}")
    elif path is None:
        settings = load_permissive(DEFAULT_CONFIG, container.env, app_is_child=mode == "exec", origin="the embedded default")
    else:
        located = _text_at(workload, container, path, objects)
        if located is None:
            mounted = [f"{kind}/{name} key {key}" for kind, name, key in _candidates(workload, container, path)]
            why = (f"{' or '.join(mounted)}, mounted there, is not in these files" if mounted
                   else "no ConfigMap or Secret volume is mounted there (is the file in the image?)")
            settings = AgentConfig(None, path, missing=why)
        else:
            settings = load_permissive(located[1], container.env, app_is_child=mode == "exec", origin=located[0])
    return Agent(container, mode, _port(container, args, settings.config), settings)


def _port(container: Container, args: Sequence[str], config: Config | None) -> int:
    listen = option(args, ("--listen",)) or container.env.get("SIDECAR_AGENT_LISTEN")
    if listen:
        try:
            return parse_address(listen, default_host="0.0.0.0", any_port=True)[1]
        except ValueError:
            pass
    if config is not None:
        return config.listen[1]
    return container.ports[0][1] if len(container.ports) == 1 else DEFAULT_PORT
