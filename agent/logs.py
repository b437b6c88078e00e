"""Logging: one JSON (or text) line per state change, to stdout, with secrets scrubbed."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from agent.fields import REDACTED


class Scrubber:
    """Replaces every known secret in a text; longest first, so no secret is half-replaced."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        self._secrets = sorted({*self._secrets, *(s for s in secrets if s)}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, scrub: Scrubber) -> None:
        super().__init__()
        self.json, self.scrub = fmt == "json", scrub

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.json:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
            line = json.dumps({"time": stamp, "level": record.levelname.lower(), "logger": record.name,
                               "message": message, **fields}, default=str)
        else:
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            line = f"{self.formatTime(record)} {record.levelname:<7} {message}" + (f" [{extra}]" if extra else "")
        return self.scrub(line)


def setup(level: str = "info", fmt: str = "json", scrub: Scrubber | None = None,
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
    return scrub


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log a full sentence with structured fields."""
    logger.log(level, message, extra={"fields": fields})
