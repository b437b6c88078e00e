"""Reading manifests: files and directories in, YAML documents with their line numbers out."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.lint.findings import InputError

YAML_SUFFIXES = (".yaml", ".yml")


class Node(dict[str, Any]):
    """A YAML mapping that remembers its own line and the line of each of its keys (1-based)."""

    def __init__(self, line: int | None = None) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}


def line_of(node: Any, key: str | None = None) -> int | None:
    """The line of `key` in a mapping read from YAML (or of the mapping itself); None for plain dicts."""
    if not isinstance(node, Node):
        return None
    return node.key_lines.get(key, node.line) if key is not None else node.line


@dataclass(frozen=True)
class Document:
    file: str
    line: int | None
    body: Any


@dataclass
class Sources:
    documents: list[Document] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files in a directory that hold no Kubernetes objects


class _Loader(yaml.SafeLoader):
    """A SafeLoader whose mappings are Nodes, refusing duplicate keys as kubectl does."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Node:
    loader.flatten_mapping(node)
    out = Node(node.start_mark.line + 1)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key is None or not isinstance(key, (str, int, float, bool)):
            raise yaml.constructor.ConstructorError(None, None, "a key must be a plain string", key_node.start_mark)
        key = str(key)
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        out.key_lines[key] = key_node.start_mark.line + 1
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_text(data: bytes | str, file: str) -> list[Document]:
    """Every non-empty YAML document of one file, or an InputError naming the line."""
    if isinstance(data, bytes):
        raw = data
        try:
            data = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(file, raw[:exc.start].count(b"\n") + 1, "not UTF-8 text (is this a YAML file?)") from None
    docs: list[Document] = []
    loader = _Loader(data)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            body = loader.construct_document(node)
            if body is not None:
                docs.append(Document(file, node.start_mark.line + 1, body))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise InputError(file, mark.line + 1 if mark else None, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(file, None, f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return docs


def is_object(body: Any) -> bool:
    """A Kubernetes object: a mapping with a string apiVersion and kind."""
    return isinstance(body, Mapping) and isinstance(body.get("apiVersion"), str) and isinstance(body.get("kind"), str)


def _check_objects(docs: Sequence[Document]) -> None:
    for doc in docs:
        if not is_object(doc.body):
            what = "a mapping without apiVersion and kind" if isinstance(doc.body, Mapping) else f"a {type(doc.body).__name__}"
            raise InputError(doc.file, doc.line, f"not a Kubernetes object (expected apiVersion and kind), got {what}")


def read_file(path: str) -> bytes:
    """The bytes of a file, or an InputError naming it."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InputError(path, None, f"cannot read: {exc.strerror or exc}") from None


def _yaml_files(directory: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if f.endswith(YAML_SUFFIXES) and not f.startswith(".")]
    return found


def read_paths(paths: Sequence[str]) -> Sources:
    """Every Kubernetes object in the files and directories given (directories: their *.yaml and *.yml, recursively).

    A file named on the command line must hold Kubernetes objects and nothing else; a file found in a directory
    that holds none at all (a Prometheus rules file, a Helm values file) is skipped and listed as such.
    """
    sources = Sources()
    for path in paths:
        if os.path.isdir(path):
            files = _yaml_files(path)
            if not files:
                raise InputError(path, None, "no .yaml or .yml files in this directory")
            for file in files:
                docs = parse_text(read_file(file), file)
                if not any(is_object(d.body) for d in docs):
                    sources.skipped.append(file)
                    continue
                _check_objects(docs)
                sources.files.append(file)
                sources.documents += docs
        else:
            docs = parse_text(read_file(path), path)
            if not docs:
                raise InputError(path, None, "holds no Kubernetes objects (the file is empty)")
            _check_objects(docs)
            sources.files.append(path)
            sources.documents += docs
    return sources
