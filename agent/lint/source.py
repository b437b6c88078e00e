"""Reading manifests: files and directories in, YAML documents with their line numbers out."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.lint.findings import InputError
from agent.yamlread import Node, YamlError, line_of, read_documents

__all__ = ["Document", "Node", "Sources", "is_object", "line_of", "parse_text", "read_file", "read_paths"]

YAML_SUFFIXES = (".yaml", ".yml")


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


def parse_text(data: bytes | str, file: str) -> list[Document]:
    """Every non-empty YAML document of one file, its mappings Nodes; or an InputError naming the line."""
    try:
        docs = read_documents(data)
    except YamlError as exc:
        raise InputError(file, exc.line, exc.message) from None
    return [Document(file, doc.line, doc.body) for doc in docs if doc.body is not None]


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


def yaml_files(directory: str) -> list[str]:
    """The YAML files below a directory, in a stable order; hidden files and folders left out."""
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
            files = yaml_files(path)
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
