"""Reading YAML, for the config loader and for lint alike: duplicate keys refused, every error with its line.

PyYAML alone keeps the last of two equal keys, accepts a list as a key, and raises a bare ValueError, with
no line, for a scalar it cannot build (`2001-13-45`, an int of 5000 digits). Here every such input is a
YamlError that says where it is. Mappings may be Nodes, which remember their own line and each key's line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["Document", "Node", "YamlError", "line_of", "read_document", "read_documents"]

_BITS_PER_DIGIT = 3.32  # just under log2(10): below this many bits per allowed digit, an int is surely printable
SEVERAL_DOCUMENTS = "expected one YAML document, found several (remove the extra '---')"


class YamlError(Exception):
    """Text that cannot be read as YAML: the problem, and the line (and column) it is on when there is one."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.message, self.line, self.column = message, line, column
        super().__init__(f"{self.where}: {message}" if line else message)

    @property
    def where(self) -> str:
        """`line L, column C`, `line L`, or "" when the problem is about the whole text."""
        if self.line is None:
            return ""
        return f"line {self.line}, column {self.column}" if self.column else f"line {self.line}"


class Node(dict[str, Any]):
    """A YAML mapping that remembers its own line and the line of each of its keys (1-based)."""

    def __init__(self, line: int | None = None) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}


def line_of(node: object, key: str | None = None) -> int | None:
    """The line of `key` in a mapping read as a Node (or of the mapping itself); None for plain dicts."""
    if not isinstance(node, Node):
        return None
    return node.key_lines.get(key, node.line) if key is not None else node.line


@dataclass(frozen=True)
class Document:
    line: int  # where the document starts
    body: Any  # None for an empty document


class _Loader(yaml.SafeLoader):
    """A SafeLoader with the rules above; `lines` makes its mappings Nodes."""

    lines = True

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.own_keys: dict[yaml.Node, int] = {}

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Merging rewrites a node's pairs (and those of the nodes it merges): count its own keys before.
        self.own_keys.setdefault(node, sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"))
        super().flatten_mapping(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML's scalar constructors fail with bare exceptions and no line: ValueError for 2001-13-45,
        # IndexError for an empty `!!int`, KeyError for `!!bool x`, AttributeError for `!!timestamp x`.
        try:
            value = super().construct_object(node, deep=deep)
        except (ValueError, ArithmeticError, LookupError, AttributeError, TypeError) as exc:
            raise yaml.constructor.ConstructorError(None, None, self._unreadable(node, exc), node.start_mark) from None
        # Python refuses to read a decimal int of over 4300 digits, but not a hex, octal or binary one,
        # which then cannot be printed (in an error message, say): refused here alike.
        limit = sys.get_int_max_str_digits()
        if isinstance(value, int) and limit and value.bit_length() > limit * _BITS_PER_DIGIT and not _printable(value):
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this int: it has over {limit} digits", node.start_mark)
        return value

    def _unreadable(self, node: yaml.Node, exc: Exception) -> str:
        what = node.tag.rpartition(":")[2] if node.tag.startswith("tag:yaml.org,2002:") else "value"
        # The first clause only: Python's own advice (sys.set_int_max_str_digits) is no help to a YAML author.
        detail = ": " + str(exc).split(";")[0] if isinstance(exc, (ValueError, ArithmeticError)) else ""
        # A plain scalar that looks like a date or a number is read as one; quoted, it stays a string.
        implicit = (isinstance(node, yaml.ScalarNode) and node.style is None
                    and self.resolve(yaml.ScalarNode, node.value, (True, False)) == node.tag)  # type: ignore[no-untyped-call]
        return f"cannot read this {what}{detail}" + (" (quote it to keep it a string)" if implicit else "")


def _printable(value: int) -> bool:
    try:
        str(value)
    except ValueError:
        return False
    return True


class _PlainLoader(_Loader):
    lines = False


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[str, Any]:
    # A key merged in with `<<` may be set again by the mapping itself (that is what merging is for);
    # only the mapping's own keys, which come last once merged, must be distinct.
    loader.flatten_mapping(node)
    own = loader.own_keys[node]
    out: dict[str, Any] = Node(node.start_mark.line + 1) if loader.lines else {}
    own_keys: set[str] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if key is None or not isinstance(key, (str, int, float, bool)):
            raise yaml.constructor.ConstructorError(None, None, "a key must be a plain string", key_node.start_mark)
        key = str(key)
        if index >= len(node.value) - own:
            if key in own_keys:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (YAML would keep only the last one)", key_node.start_mark)
            own_keys.add(key)
        if isinstance(out, Node):
            out.key_lines[key] = key_node.start_mark.line + 1
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad, line = data[exc.start:exc.start + 1], data.count(b"\n", 0, exc.start) + 1
        raise YamlError(f"not UTF-8 text: byte {exc.start} ({bad!r}) is not valid UTF-8", line) from None
    return text.removeprefix("\ufeff")


def read_documents(data: bytes | str, *, lines: bool = True) -> list[Document]:
    """Every document of a YAML stream with the line it starts on, or a YamlError naming the line.

    With `lines`, mappings are Nodes; otherwise plain dicts.
    """
    text = _decode(data)
    docs: list[Document] = []
    loader: _Loader | None = None
    try:
        loader = (_Loader if lines else _PlainLoader)(text)  # refuses a forbidden character at once
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                docs.append(Document(node.start_mark.line + 1, loader.construct_document(node)))
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlError(f"character U+{code:04X} is not allowed in YAML", line) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or str(exc)
        if not isinstance(exc, yaml.constructor.ConstructorError):
            message = f"not valid YAML: {message}"
        raise YamlError(message, mark.line + 1 if mark else None, mark.column + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"not valid YAML: {exc}") from None
    except RecursionError:
        # PyYAML composes and builds recursively: thousands of nested `[` exhaust the stack.
        raise YamlError("not valid YAML: nested too deeply", loader.line + 1 if loader else None) from None
    finally:
        if loader is not None:
            loader.dispose()
    return docs


def read_document(data: bytes | str, *, lines: bool = True) -> Any:
    """The one document of a YAML stream (None when it is empty), or a YamlError: several documents are one."""
    docs = read_documents(data, lines=lines)
    if len(docs) > 1:
        raise YamlError(SEVERAL_DOCUMENTS)
    return docs[0].body if docs else None
