"""The agent's config for one pod: the checks made from its probes, merged with the `sidecar-agent.io/checks`
annotation, validated as a config file is (agent.config.load_tree), and the app env entries its `${VAR}`s need."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from agent import checks
from agent.config import Config, ConfigError, load_tree, parse_yaml
from agent.fields import env_references
from agent.inject.api import InjectError
from agent.inject.edits import plain
from agent.kube.facts import AGENT_PORT

CHECKS_ANNOTATION = "sidecar-agent.io/checks"
ANNOTATION_PATH = ("metadata", "annotations", CHECKS_ANNOTATION)
WHERE = f'metadata.annotations["{CHECKS_ANNOTATION}"]'
LISTEN_PORT = AGENT_PORT
_PLACEHOLDER = "injectvar{}x"
# The config text is only read back here: libyaml writes it several times faster where PyYAML has it.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _text(value: Any) -> str:
    return yaml.dump(value, Dumper=_DUMPER, sort_keys=False)


def annotation_checks(annotations: Mapping[str, Any]) -> dict[str, Any]:
    """The checks the annotation adds (a mapping in the config's `checks` format), or {} without it."""
    text = annotations.get(CHECKS_ANNOTATION)
    if text is None:
        return {}
    if not isinstance(text, str):
        raise InjectError(f"{WHERE}: expected a YAML mapping as a string, got {type(text).__name__}", ANNOTATION_PATH)
    try:
        tree = parse_yaml(text)
    except ConfigError as exc:
        raise InjectError("; ".join(f"{WHERE}: {m}" for _, m in exc.problems), ANNOTATION_PATH) from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise InjectError(f"{WHERE}: expected a mapping of check names to checks, got {type(tree).__name__}", ANNOTATION_PATH)
    return tree


def merge(generated: Mapping[str, dict[str, Any]], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The generated checks with the annotation's: a check of the same name takes the annotation's keys over its own."""
    merged: dict[str, Any] = {name: dict(body) for name, body in generated.items()}
    for name, body in extra.items():
        if name in merged and isinstance(body, Mapping):
            merged[name] = {**merged[name], **body}
        else:
            merged[name] = body
    return merged


def variables(extra: Mapping[str, Any]) -> list[str]:
    """The `${VAR}` names (without a default) the annotation's checks use, in order of first use."""
    found: list[str] = []
    for name, default in env_references(_text(dict(extra))):
        if default is None and name not in found:
            found.append(name)
    return found


def validate(config: Mapping[str, Any], generated: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """Load the config as the agent will: every problem of the annotation's checks is an InjectError with its key path.

    `${VAR}` reads a placeholder, so a secret written literally in the annotation (a password in a DSN, a header
    value) shows as a secret that is neither made of placeholders nor the pod spec's own (a probe's header), and is
    refused.
    """
    names = variables(extra)
    env = {name: _PLACEHOLDER.format(i) for i, name in enumerate(names)}
    try:
        loaded = _load(config, env)
    except ConfigError as exc:
        # A field whose value comes from ${VAR} holds a placeholder here, not a DSN or a URL: its problems are the
        # runtime value's, which only the agent sees. Every other problem is the annotation's.
        real = [(p, m) for p, m in exc.problems if not _from_variable(config, p)]
        ours = [(p, m) for p, m in real if p.split(".")[1:2] and p.split(".")[1] in generated and
                p.split(".")[1] not in extra]
        if ours:  # a check made from a probe: the probe's values, not the annotation, are at fault
            raise InjectError("; ".join(f"the check {p} made from the container's probe: {m}" for p, m in ours)) from None
        if real:
            raise InjectError("; ".join(f"{WHERE}.{p}: {m}" if p else f"{WHERE}: {m}" for p, m in real),
                              ANNOTATION_PATH) from None
        tainted = {p.split(".")[1] for p, _ in exc.problems if p.startswith("checks.")}
        kept = {n: b for n, b in dict(config.get("checks") or {}).items() if n not in tainted}
        loaded = _load({**config, "checks": kept}, env)
    if not extra:
        return
    own = _load({**config, "checks": dict(generated)}, {}).secrets
    for secret in loaded.secrets - own:
        if _literal(secret, env.values()):
            where = next((n for n, b in extra.items() if secret in _text(b)), None)
            path = f"{WHERE}.checks.{where}" if where else WHERE
            raise InjectError(f"{path}: a secret is written in plain text; write it as ${{VAR}} naming an env entry "
                              "of the app container (a secretKeyRef is copied to the agent)", ANNOTATION_PATH)


def _literal(secret: str, placeholders: Iterable[str]) -> bool:
    """Whether a secret holds text of its own beside the ${VAR} placeholders. A header's scheme word is none: the
    config records `Authorization: Bearer ${TOKEN}` both whole and as its credential words (fields.py)."""
    rest = secret
    for value in placeholders:
        rest = rest.replace(value, "")
    words = secret.split()
    return bool(rest.strip()) and not (len(words) >= 2 and rest.split() == words[:1])


def _from_variable(config: Mapping[str, Any], path: str) -> bool:
    """Whether the value at a problem's key path (checks.NAME.KEY...) is written with a ${VAR}."""
    node: Any = config
    for step in path.split("."):
        if not isinstance(node, Mapping) or step not in node:
            return False
        node = node[step]
    return "${" in _text(node)


def _load(config: Mapping[str, Any], env: Mapping[str, str]) -> Config:
    # The tree itself, not its YAML text: the safe dumper and reader give back the same plain values, and reading
    # the text again was half of an admission review's time.
    body = dict(config)
    body["checks"] = {n: b for n, b in dict(body.get("checks") or {}).items() if not checks.not_installed(b)}
    return load_tree(body, env)


def copied_env(names: Sequence[str], containers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The env entries of the app containers that the annotation's `${VAR}`s name, to copy to the agent's container."""
    out: list[dict[str, Any]] = []
    for name in names:
        entry = next((e for c in containers for e in (c.get("env") or ()) if isinstance(e, Mapping) and e.get("name") == name),
                     None)
        if entry is None:
            raise InjectError(f"{WHERE}: ${{{name}}} names no env entry of the app containers (env from envFrom is not "
                              "copied: add an env entry, with valueFrom.secretKeyRef for a secret)", ANNOTATION_PATH)
        out.append(plain(entry))
    return out
