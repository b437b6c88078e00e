"""Whatever shape a manifest's fields have, lint answers with findings or an InputError, never another exception."""

from __future__ import annotations

import contextlib
import copy
import pathlib
import random
from typing import Any

import pytest

from agent.lint import InputError, lint_documents
from agent.lint.source import Document, parse_text

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
ODD_VALUES: list[Any] = [None, 0, -1, 7, True, "", "x", "probes", [], ["a", 1], {}, {"k": "v"}, 1.5]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


def _set(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


def _documents() -> list[Document]:
    docs: list[Document] = []
    for path in sorted(CORPUS.rglob("*.yaml")):
        docs += parse_text(path.read_bytes(), str(path))
    return docs


@pytest.mark.parametrize("seed", range(5))
def test_mutated_manifests_never_crash(seed: int) -> None:
    rng = random.Random(seed)
    originals = _documents()
    for _ in range(300):
        doc = rng.choice(originals)
        body = copy.deepcopy(dict(doc.body))
        for _ in range(rng.randint(1, 3)):
            paths = [p for p in _paths(body) if p[0] not in ("apiVersion", "kind")]
            _set(body, rng.choice(paths), copy.deepcopy(rng.choice(ODD_VALUES)))
        with contextlib.suppress(InputError):  # unreadable input is a clean answer too
            lint_documents([Document(doc.file, doc.line, body)])
