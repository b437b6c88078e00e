"""`sidecar-agent inject` over files: YAML documents in (files, directories, stdin; multi-document, `kind: List`), every
pod template injected (or restored), the documents out as YAML in their order, keys in their order."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.inject.api import InjectError, Options, Outcome
from agent.inject.edits import plain
from agent.inject.template import inject, remove
from agent.lint import source
from agent.lint.findings import InputError

# Where each workload kind keeps its pod template ({"metadata", "spec"}); a Pod is its own.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


@dataclass
class Report:
    """The output text and what to say on stderr."""

    text: str = ""
    notes: list[str] = field(default_factory=list)
    injected: int = 0
    skipped: int = 0


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the agent's config) as literal blocks; everything else as PyYAML writes it."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


def _line(node: Any, path: Sequence[str | int]) -> int | None:
    """The line of the deepest node along `path` that has one."""
    line = source.line_of(node)
    for step in path:
        if isinstance(node, Mapping) and isinstance(step, str) and step in node:
            line = source.line_of(node, step) or line
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            node = node[step]
            line = source.line_of(node) or line
        else:
            break
    return line


def process(body: Any, file: str, line: int | None, change: Callable[[Mapping[str, Any], str], Outcome],
            report: Report) -> Any:
    """One document with its pod templates changed (a List's items each in turn); other kinds as they are."""
    if not isinstance(body, Mapping):
        return plain(body)
    kind = body.get("kind")
    if kind == "List" and isinstance(body.get("items"), list):
        out = plain(body)
        out["items"] = [process(item, file, source.line_of(item) or line, change, report) for item in body["items"]]
        return out
    if not isinstance(kind, str) or kind not in TEMPLATES:
        return plain(body)
    steps = TEMPLATES[kind]
    node: Any = body
    for step in steps:
        node = node.get(step) if isinstance(node, Mapping) else None
    name = body.get("metadata", {}).get("name") if isinstance(body.get("metadata"), Mapping) else None
    ref = f"{file}:{source.line_of(body) or line or 1}: {kind}/{name or '(unnamed)'}"
    if not isinstance(node, Mapping):
        report.notes.append(f"{ref}: not injected: no pod template at {'.'.join(steps) or 'the top'}")
        report.skipped += 1
        return plain(body)
    template = {k: node[k] for k in ("metadata", "spec") if k in node}
    try:
        outcome = change(template, kind)
    except InjectError as exc:
        raise InputError(file, _line(node, exc.path) or line, f"{kind}/{name or '(unnamed)'}: {exc}") from None
    report.notes += [f"{ref}: {note}" for note in outcome.notes]
    if outcome.injected:
        report.injected += 1
    else:
        report.skipped += 1
    out = plain(body)
    target = out
    for step in steps:
        target = target[step]
    for key in ("metadata", "spec"):  # in place: the other keys and their order stay
        if key in outcome.template:
            target[key] = outcome.template[key]
        else:
            target.pop(key, None)
    return out


def _inputs(paths: Sequence[str], stdin: Callable[[], bytes]) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    for path in paths or ["-"]:
        if path == "-":
            found.append(("<stdin>", stdin()))
        elif os.path.isdir(path):
            files = source.yaml_files(path)
            if not files:
                raise InputError(path, None, "no .yaml or .yml files in this directory")
            found += [(f, source.read_file(f)) for f in files]
        else:
            found.append((path, source.read_file(path)))
    return found


def run(paths: Sequence[str], options: Options, *, undo: bool = False,
        stdin: Callable[[], bytes] = lambda: sys.stdin.buffer.read()) -> Report:
    """Inject (or with `undo`, remove) every pod template in the inputs; raises InputError with file and line."""
    def change(template: Mapping[str, Any], kind: str) -> Outcome:
        return remove(template) if undo else inject(template, options, kind)

    report = Report()
    out: list[str] = []
    for file, data in _inputs(paths, stdin):
        for doc in source.parse_text(data, file):
            out.append(dump(process(doc.body, file, doc.line, change, report)))
    report.text = "---\n".join(out)
    return report
