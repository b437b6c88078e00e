"""Logging: one JSON (or text) line per state change, to stdout, with secrets scrubbed."""

from __future__ import annotations

import enum
import json
import logging
import sys
from collections.abc import Iterable
from typing import IO, Any

from agent.fields import REDACTED
from agent.units import format_time

MIN_SECRET = 4  # shorter "secrets" would be replaced inside ordinary words, mangling every line


class LogLevel(enum.StrEnum):
    """The least severe level logged (`log.level`)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(enum.StrEnum):
    """How each line is written (`log.format`)."""

    JSON = "json"  # one object a line
    TEXT = "text"  # for people


class Scrubber:
    """Replaces every known secret in a text; longest first, so no secret is half-replaced."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.too_short = 0  # secrets left unscrubbed because they are shorter than MIN_SECRET
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        fresh = {s for s in secrets if s and s not in self._secrets}
        self.too_short += sum(1 for s in fresh if len(s) < MIN_SECRET)
        self._secrets = sorted({*self._secrets, *(s for s in fresh if len(s) >= MIN_SECRET)}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, scrub: Scrubber) -> None:
        super().__init__()
        self.json, self.scrub = fmt == LogFormat.JSON, scrub

    def format(self, record: logging.LogRecord) -> str:
        # Values are scrubbed, not the formatted line, so the line keeps its structure.
        fields = {k: self._clean(v) for k, v in getattr(record, "fields", {}).items()}
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        message = self.scrub(message)
        if self.json:
            line = json.dumps({"time": format_time(record.created), "level": record.levelname.lower(), "logger": record.name,
                               "message": message, **fields}, default=str)
        else:
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            line = f"{self.formatTime(record)} {record.levelname:<7} {message}" + (f" [{extra}]" if extra else "")
        return line

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, (list, tuple)):
            return [self._clean(v) for v in value]
        return value if isinstance(value, (int, float, bool)) or value is None else self.scrub(str(value))


def setup(level: str = LogLevel.INFO, fmt: str = LogFormat.JSON, scrub: Scrubber | None = None,
          stream: IO[str] | None = None) -> Scrubber:
    """Send the agent's logs to `stream` (stdout) in `fmt`; returns the scrubber to add secrets to."""
    scrub = scrub or Scrubber()
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_Formatter(fmt, scrub))
    root = logging.getLogger("agent")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("aiohttp").handlers[:] = [handler]
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_not_a_bad_request)
    return scrub


def _not_a_bad_request(record: logging.LogRecord) -> bool:
    """Drop aiohttp's error-with-traceback for a malformed request: the client got its 400, and a scanner
    must not flood the log."""
    from aiohttp.http_exceptions import HttpProcessingError

    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, HttpProcessingError)


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log a full sentence with structured fields."""
    logger.log(level, message, extra={"fields": fields})
