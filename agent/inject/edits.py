"""Edits to a pod template that can be taken back exactly: each records what was there before (or that nothing was).

The record rides in the status annotation as JSON, so `--remove` restores the template byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.inject.api import InjectError

Path = tuple[str | int, ...]


def walk(root: Any, path: Sequence[str | int]) -> Any:
    """The node at `path` (keys and list indexes) below `root`."""
    node = root
    for step in path:
        node = node[step]
    return node


class Editor:
    """Applies edits to a template (a plain, mutable copy) and keeps the record that undoes them."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.record: list[dict[str, Any]] = []

    def set(self, path: Path, value: Any) -> None:
        """Set the key at `path` (its parent exists), remembering the value it had, or that it had none."""
        parent = walk(self.root, path[:-1])
        key = path[-1]
        entry: dict[str, Any] = {"path": list(path)}
        if key in parent:
            entry["was"] = parent[key]
        self.record.append(entry)
        parent[key] = value

    def append(self, path: Path, element: dict[str, Any]) -> None:
        """Append a named element to the list at `path`, creating the list when there is none."""
        parent = walk(self.root, path[:-1])
        if parent.get(path[-1]) is None:
            self.set(path, [])
        walk(self.root, path).append(element)
        self.record.append({"path": list(path), "added": element["name"]})


def undo(root: dict[str, Any], record: Sequence[Mapping[str, Any]], where: str) -> None:
    """Take the recorded edits back, last first."""
    try:
        for entry in reversed(record):
            path = [step for step in entry["path"]]
            if "added" in entry:
                items = walk(root, path)
                index = next(i for i, e in enumerate(items) if isinstance(e, Mapping) and e.get("name") == entry["added"])
                del items[index]
            elif "was" in entry:
                walk(root, path[:-1])[path[-1]] = entry["was"]
            else:
                walk(root, path[:-1]).pop(path[-1], None)
    except (KeyError, IndexError, TypeError, StopIteration):
        raise InjectError(f"{where}: the record of the injection does not fit this template (edited since?)") from None


def plain(value: Any) -> Any:
    """A deep copy made of plain dicts and lists (YAML readers hand out subclasses that a dumper refuses)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
