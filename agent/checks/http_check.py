"""`http`: a request to `url` answers with a status in range (200-399 by default) and, optionally, a body match."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agent import __version__
from agent.checks import CheckContext, CheckFailure, CheckType
from agent.fields import Bool, Enum, Field, Regex, StatusRange, StrMap, Url, optional, redact_url
from agent.units import is_loopback_host

MAX_BODY = 10 * 1024  # like the kubelet, read at most 10 KiB


@dataclass(frozen=True)
class Params:
    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    status: tuple[tuple[int, int], ...] = ((200, 399),)
    expect_body: str | None = None
    tls_verify: bool = True


class HttpCheck:
    def __init__(self, params: Params) -> None:
        self.params = params
        self.shown_url = redact_url(params.url)
        self.body_pattern = re.compile(params.expect_body) if params.expect_body else None
        self.session: aiohttp.ClientSession | None = None

    async def run(self) -> str:
        if self.session is None:
            # A new connection for every request, like the kubelet: a dead listener must show.
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, ssl=self.params.tls_verify),
                headers={"User-Agent": f"sidecar-agent/{__version__}"},
                timeout=aiohttp.ClientTimeout(total=None),
            )
        p = self.params
        try:
            async with self.session.request(p.method, p.url, headers=dict(p.headers), allow_redirects=False) as resp:
                body = await resp.content.read(MAX_BODY) if self.body_pattern else b""
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                raise CheckFailure(f"connection refused by {exc.host}:{exc.port}") from None
            raise CheckFailure(f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise CheckFailure(f"{p.method} {self.shown_url} failed: {type(exc).__name__}: {exc}") from None
        if not any(low <= status <= high for low, high in p.status):
            raise CheckFailure(f"HTTP {status} from {self.shown_url} (expected {_ranges(p.status)})")
        if self.body_pattern and not self.body_pattern.search(body.decode("utf-8", "replace")):
            raise CheckFailure(f"HTTP {status}, but the body does not match /{self.body_pattern.pattern}/")
        return f"HTTP {status}"

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def _ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in ranges)


def _validate(params: Params) -> str | None:
    parts = urlsplit(params.url)
    if (parts.username or parts.password) and any(k.lower() == "authorization" for k, _ in params.headers):
        return "credentials in the url and an Authorization header cannot both be sent: keep one of them"
    return None


def _create(spec: Any, ctx: CheckContext) -> HttpCheck:
    return HttpCheck(spec.params)


TYPE = CheckType(
    name="http",
    fields=(
        Field("url", Url(["http", "https"]), doc="the URL to request"),
        Field("method", Enum(["GET", "HEAD", "POST", "PUT", "OPTIONS"]), "GET", "the request method"),
        Field("headers", StrMap(secret=True), (), "request headers; values are treated as secrets"),
        Field("status", StatusRange(), ((200, 399),), "status codes that pass, like 200-399"),
        optional("expect_body", Regex(), "a regex the first 10 KiB of the body must match"),
        Field("tls_verify", Bool(), True, "verify the server's certificate for https"),
    ),
    params=Params,
    create=_create,
    is_dependency=lambda params: not is_loopback_host(urlsplit(params.url).hostname or ""),
    validate=_validate,
)
