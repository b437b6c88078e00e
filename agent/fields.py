"""Declarative config fields: one table drives parsing, redaction, dumping and the JSON Schema."""

from __future__ import annotations

import dataclasses
import re
import reprlib
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from agent import units

REDACTED = "<redacted>"
# Any value may be written as ${VAR} or ${VAR:-default} ($$ is a literal $); the loader expands it before checking
# the kind. The one spelling of a reference: the loader's, lint's and the JSON Schema's.
_REFERENCE = r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}"
ENV_VAR = re.compile(r"\$\$|" + _REFERENCE)  # group 1 the name, group 2 the default; neither for $$
ENV_REFERENCE = {"type": "string", "pattern": _REFERENCE}
_MISSING = object()


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def env_references(text: str) -> list[tuple[str, str | None]]:
    """(name, default or None) of every ${VAR} in `text`, in order; a `$$` escape is none."""
    return [(m.group(1), m.group(2)) for m in ENV_VAR.finditer(text) if m.group(1)]


class ConfigError(Exception):
    """Every problem found in a config, each as `key.path: message`."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in self.problems))


class Problems:
    """Collects problems while parsing so that one run reports all of them."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.secrets: set[str] = set()

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


class Invalid(ValueError):
    """A value that a kind refuses; the message says what was expected."""


def describe(value: object) -> str:
    """A short, quoted rendering of a bad value for error messages."""
    text = _SHORT.repr(value)  # bounded: a YAML alias can make a small file a huge nested value
    return text if len(text) <= 60 else text[:57] + "..."


def join(path: str, key: str) -> str:
    key = key if key else '""'  # an empty key still needs a visible path
    return f"{path}.{key}" if path else key


class Kind:
    """How one field's value is parsed, dumped, redacted and described in the schema."""

    def shape(self) -> str:
        """What a value of this kind looks like, in a reader's words (the docs' key tables)."""
        return type(self).__name__.lower()

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError


class Str(Kind):
    def shape(self) -> str:
        return "string"

    def __init__(self, *, nonempty: bool = True) -> None:
        self.nonempty = nonempty

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise Invalid(f"expected a string, got {describe(value)}")
        text = str(value)
        if self.nonempty and not text:
            raise Invalid("must not be empty")
        return text

    def schema(self) -> dict[str, Any]:
        return {"type": ["string", "number"], **({"minLength": 1} if self.nonempty else {})}


class Secret(Str):
    """A string that is never printed: tokens, passwords."""

    def shape(self) -> str:
        return "string (secret)"

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        text = super().parse(value, path, problems)
        problems.secrets.add(text)
        return text

    def dump(self, value: Any) -> Any:
        return REDACTED


class Url(Kind):
    """A URL whose password, if any, is a secret."""

    def shape(self) -> str:
        return "URL (" + ", ".join(f"`{s}://`" for s in self.schemes) + "; a password in it is secret)"

    def __init__(self, schemes: Sequence[str]) -> None:
        self.schemes = tuple(schemes)

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if not isinstance(value, str) or not value:
            raise Invalid(f"expected a URL like {self.schemes[0]}://host/path, got {describe(value)}")
        parts = split_secret_url(value, problems)
        if parts.scheme not in self.schemes or not parts.hostname:
            expected = " or ".join(f"{s}://" for s in self.schemes)
            raise Invalid(f"expected a URL starting with {expected} and naming a host")
        return value

    def dump(self, value: Any) -> Any:
        return redact_url(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^(" + "|".join(map(re.escape, self.schemes)) + ")://"}


def split_secret_url(value: str, problems: Problems) -> SplitResult:
    """Split a URL that may hold a password, recording the password as a secret; messages never repeat it."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        # urlsplit's message would quote part of the netloc, which may be the start of a password.
        raise Invalid("not a valid URL (is the port a number? percent-encode '/', '?', '#' and '@' "
                      "in a password)") from None
    if parts.password:
        problems.secrets.add(parts.password)
    return parts


def redact_url(url: str) -> str:
    """The URL with its password replaced."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{netloc}"))


class Bool(Kind):
    def shape(self) -> str:
        return "boolean"

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise Invalid(f"expected true or false, got {describe(value)}")

    def schema(self) -> dict[str, Any]:
        return {"type": ["boolean", "string"], "enum": [True, False, "true", "false"]}


class Number(Kind):
    def shape(self) -> str:
        noun = "integer" if self.integer else "number"
        if self.minimum is not None and self.maximum is not None:
            return f"{noun} {self.minimum:g}-{self.maximum:g}"
        return f"{noun} ≥ {self.minimum:g}" if self.minimum is not None else noun

    def __init__(self, *, integer: bool, minimum: float | None = None, maximum: float | None = None) -> None:
        self.integer, self.minimum, self.maximum = integer, minimum, maximum

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        noun = "a whole number" if self.integer else "a number"
        number: float | int
        if isinstance(value, bool):
            raise Invalid(f"expected {noun}, got {describe(value)}")
        if isinstance(value, str):
            try:
                number = int(value) if self.integer else float(value)
            except ValueError:
                raise Invalid(f"expected {noun}, got {describe(value)}") from None
        elif isinstance(value, int) or (isinstance(value, float) and not self.integer):
            number = value
        else:
            raise Invalid(f"expected {noun}, got {describe(value)}")
        if self.minimum is not None and number < self.minimum:
            raise Invalid(f"must be at least {self.minimum:g}, got {_number(number)}")
        if self.maximum is not None and number > self.maximum:
            raise Invalid(f"must be at most {self.maximum:g}, got {_number(number)}")
        return number

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer" if self.integer else "number"}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return {"anyOf": [out, {"type": "string", "pattern": r"^-?[0-9.]+$"}]}


def _number(value: float) -> str:
    """A number for a message; :g overflows on ints beyond a float's range."""
    text = str(value) if isinstance(value, int) else f"{value:g}"
    return text if len(text) <= 20 else text[:17] + "..."


class Duration(Kind):
    def shape(self) -> str:
        return "duration"

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        try:
            seconds = units.parse_duration(value)
        except ValueError:
            raise Invalid(f"expected a duration like 2s, got {describe(value)}") from None
        if self.positive and seconds <= 0:
            raise Invalid(f"must be longer than 0s, got {describe(value)}")
        return seconds

    def dump(self, value: Any) -> Any:
        return units.format_duration(value)

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [
            {"type": "number", **({"exclusiveMinimum": 0} if self.positive else {"minimum": 0})},
            {"type": "string", "pattern": r"^\s*([0-9]+(\.[0-9]+)?(ms|s|m|h))+\s*$|^\s*[0-9]+(\.[0-9]+)?\s*$"},
        ]}


class Size(Kind):
    def shape(self) -> str:
        return "size"

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        try:
            return units.parse_size(value)
        except ValueError:
            raise Invalid(f"expected a size like 512Mi, got {describe(value)}") from None

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "integer", "minimum": 0},
                          {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(Ki|Mi|Gi|Ti|k|K|M|G|T)?B?\s*$"}]}


class Address(Kind):
    def shape(self) -> str:
        return "host:port"

    def __init__(self, default_host: str | None = None) -> None:
        self.default_host = default_host

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        try:
            return units.parse_address(value, default_host=self.default_host)
        except ValueError as exc:
            raise Invalid(str(exc)) from None

    def dump(self, value: Any) -> Any:
        return units.format_address(*value)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": r"^(\[[0-9a-fA-F:.]+\]|[^:\s]*):[0-9]{1,5}$"}


class Regex(Str):
    def shape(self) -> str:
        return "regex"

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        text = super().parse(value, path, problems)
        try:
            re.compile(text)
        except (re.error, OverflowError, RecursionError) as exc:
            raise Invalid(f"not a valid regular expression: {exc}") from None
        return text


class Enum(Kind):
    def shape(self) -> str:
        return "one of " + ", ".join(f"`{c}`" for c in self.choices)

    def __init__(self, choices: Iterable[str], *, ignore_case: bool = False) -> None:
        # An enum.StrEnum class is an iterable of its members: parsing then gives the member itself.
        self.choices, self.ignore_case = tuple(choices), ignore_case

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if isinstance(value, str):
            key = value.lower() if self.ignore_case else value
            for choice in self.choices:
                if key == (choice.lower() if self.ignore_case else choice):
                    return choice
        raise Invalid(f"expected one of {', '.join(self.choices)}, got {describe(value)}")

    def dump(self, value: Any) -> Any:
        return str(value)  # a StrEnum member as its plain value (YAML's safe dumper knows only plain str)

    def schema(self) -> dict[str, Any]:
        if self.ignore_case:
            return {"type": "string", "pattern": "(?i)^(" + "|".join(self.choices) + ")$"}
        return {"type": "string", "enum": list(self.choices)}


class SignalName(Enum):
    def shape(self) -> str:
        return "signal name"

    def __init__(self) -> None:
        names = sorted(s.name for s in signal.Signals if s.name.startswith("SIG") and not s.name.startswith("SIG_"))
        super().__init__(names)

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if isinstance(value, str) and not value.upper().startswith("SIG"):
            value = "SIG" + value.upper()
        elif isinstance(value, str):
            value = value.upper()
        return super().parse(value, path, problems)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "(?i)^(SIG)?[A-Z0-9]+$"}


class StatusRange(Kind):
    """HTTP status codes as `200-399`, `200`, or a list of those."""

    def shape(self) -> str:
        return "status range, or a list of them"

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        items = value if isinstance(value, list) else [value]
        ranges: list[tuple[int, int]] = []
        for item in items:
            text = str(item).strip() if isinstance(item, (str, int)) and not isinstance(item, bool) else ""
            match = re.fullmatch(r"(\d{3})(?:\s*-\s*(\d{3}))?", text)
            if not match:
                raise Invalid(f"expected a status range like 200-399, got {describe(item)}")
            low, high = int(match.group(1)), int(match.group(2) or match.group(1))
            if not 100 <= low <= high <= 599:
                raise Invalid(f"expected status codes from 100 to 599, low to high, got {describe(item)}")
            ranges.append((low, high))
        if not ranges:
            raise Invalid("must name at least one status range")
        return tuple(ranges)

    def dump(self, value: Any) -> Any:
        return [f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in value]

    def schema(self) -> dict[str, Any]:
        one = {"anyOf": [{"type": "integer", "minimum": 100, "maximum": 599},
                         {"type": "string", "pattern": r"^\s*[0-9]{3}(\s*-\s*[0-9]{3})?\s*$"}]}
        return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]}


class ListOf(Kind):
    def shape(self) -> str:
        item = self.item.shape()
        return "list of " + (item.removeprefix("one of ") if isinstance(self.item, Enum) else item)

    def __init__(self, item: Kind, *, nonempty: bool = False, unique: bool = False) -> None:
        self.item, self.nonempty, self.unique = item, nonempty, unique

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if not isinstance(value, list):
            raise Invalid(f"expected a list, got {describe(value)}")
        if self.nonempty and not value:
            raise Invalid("must not be an empty list")
        out = []
        for index, item in enumerate(value):
            try:
                out.append(self.item.parse(item, f"{path}[{index}]", problems))
            except Invalid as exc:
                problems.add(f"{path}[{index}]", str(exc))
        if self.unique and len(set(out)) != len(out):
            raise Invalid("lists the same entry twice")
        return tuple(out)

    def dump(self, value: Any) -> Any:
        return [self.item.dump(v) for v in value]

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "array", "items": self.item.schema()}
        if self.nonempty:
            out["minItems"] = 1
        if self.unique:
            out["uniqueItems"] = True
        return out


class StrMap(Kind):
    """A mapping of names to strings; `secret` values are never printed."""

    def shape(self) -> str:
        return "mapping of strings" + (" (values secret)" if self.secret else "")

    def __init__(self, *, secret: bool = False) -> None:
        self.secret = secret

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if not isinstance(value, dict):
            raise Invalid(f"expected a mapping of names to strings, got {describe(value)}")
        out: dict[str, str] = {}
        for key, item in value.items():
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                problems.add(join(path, str(key)), f"expected a string, got {describe(item)}")
                continue
            out[str(key)] = str(item)
            if self.secret and str(item):
                problems.secrets.add(str(item))
                # "Bearer abc": the credential alone must not leak either
                problems.secrets.update(w for w in str(item).split()[1:] if len(w) >= 4)
        return tuple(out.items())

    def dump(self, value: Any) -> Any:
        return {k: (REDACTED if self.secret else v) for k, v in value}

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": {"type": ["string", "number"]}}


@dataclass(frozen=True)
class Field:
    """One config key: its kind, whether it is required, and its default."""

    name: str
    kind: Kind
    default: Any = _MISSING
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def with_defaults(fields: Sequence[Field], build: Callable[..., Any], *, strict: bool = True) -> tuple[Field, ...]:
    """`fields` with each default taken from the dataclass `build` they are parsed into, where it is written once.

    A field that writes a default of its own as well is refused (ValueError, at import); with `strict` False (a
    plug-in's check type, written before this rule) only when the two differ. A field of a section, whose default is
    the section's own dataclass built with no arguments, needs none written either.
    """
    if not (isinstance(build, type) and dataclasses.is_dataclass(build)):
        return tuple(fields)
    defaults: dict[str, Any] = {}
    for attr in dataclasses.fields(build):
        if attr.default is not dataclasses.MISSING:
            defaults[attr.name] = attr.default
        elif attr.default_factory is not dataclasses.MISSING:
            defaults[attr.name] = attr.default_factory()
    out = []
    for f in fields:
        if f.name in defaults:
            # (optional() writes None, which says "no default" rather than repeating one)
            if f.default is not _MISSING and (f.default != defaults[f.name] or (strict and f.default is not None)):
                raise ValueError(f"the default of {build.__name__}.{f.name} is written twice: on the dataclass "
                                 f"({defaults[f.name]!r}) and on its Field ({f.default!r}); keep the dataclass's")
            f = dataclasses.replace(f, default=defaults[f.name])
        out.append(f)
    return tuple(out)


class Section(Kind):
    """A mapping with known keys, built into a frozen dataclass by `build`; the defaults are the dataclass's."""

    def shape(self) -> str:
        return "mapping"

    def __init__(self, fields: Sequence[Field], build: Callable[..., Any],
                 *, one_of: Sequence[str] = (), check: Callable[[Any, str, Problems], None] | None = None) -> None:
        self.fields = with_defaults(fields, build)
        self.build = build
        self.one_of = tuple(one_of)
        self.check = check

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        values = parse_mapping(value, self.fields, path, problems, one_of=self.one_of)
        if values is None:
            return None
        built = self.build(**values)
        if self.check is not None:
            self.check(built, path, problems)
        return built

    def dump(self, value: Any) -> Any:
        if value is None:
            return None
        return dump_fields(value, self.fields)

    def schema(self) -> dict[str, Any]:
        return object_schema(self.fields, one_of=self.one_of)


def parse_mapping(value: Any, fields: Sequence[Field], path: str, problems: Problems,
                  *, one_of: Sequence[str] = (), extra_ok: Sequence[str] = (),
                  partial: bool = False) -> dict[str, Any] | None:
    """Parse a mapping against its fields: unknown keys, missing keys and bad values all reported.

    Returns None when anything was wrong, unless `partial`, which returns what did parse (bad values
    as None) so that the caller can go on and report the problems further down too.
    """
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {describe(value)}")
        return None
    known = {f.name: f for f in fields}
    ok = True
    for key in value:
        if key in known or key in extra_ok:
            continue
        ok = False
        names = [*known, *extra_ok]
        import difflib  # only for a mistake: it costs memory otherwise

        close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(names))}"
        problems.add(join(path, str(key)), f"unknown key{hint}")
    if one_of:
        given = [k for k in one_of if value.get(k) is not None]
        if len(given) != 1:
            problems.add(path, f"set exactly one of {', '.join(one_of)}")
            ok = False
    out: dict[str, Any] = {}
    for f in fields:
        raw = value.get(f.name)
        if raw is None:
            if f.required and f.name not in one_of:
                problems.add(join(path, f.name), "required key is missing")
                ok = False
            out[f.name] = None if f.default is _MISSING else f.default
            continue
        try:
            out[f.name] = f.kind.parse(raw, join(path, f.name), problems)
        except Invalid as exc:
            problems.add(join(path, f.name), str(exc))
            ok = False
    return out if ok or partial else None


def dump_fields(obj: Any, fields: Sequence[Field]) -> dict[str, Any]:
    """The normalised, redacted form of a parsed section."""
    out: dict[str, Any] = {}
    for f in fields:
        value = getattr(obj, f.name)
        if value is None:
            continue
        out[f.name] = f.kind.dump(value)
    return out


def object_schema(fields: Sequence[Field], *, one_of: Sequence[str] = (),
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of a section."""
    props = {f.name: {"anyOf": [f.kind.schema(), ENV_REFERENCE], **({"description": f.doc} if f.doc else {})}
             for f in fields}
    props.update(extra or {})
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    required = [f.name for f in fields if f.required and f.name not in one_of]
    if required:
        out["required"] = required
    if one_of:
        out["oneOf"] = [{"required": [name]} for name in one_of]
    return out


def optional(name: str, kind: Kind, doc: str = "") -> Field:
    return Field(name, kind, default=None, doc=doc)

