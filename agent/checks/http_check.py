"""`http`: a request to `url` answers with a status in range (200-399 by default) and, optionally, a body match."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from agent import __version__
from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckType
from agent.checks.tcp_check import numeric_address, open_first
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
        self.direct = _direct_request(params)

    async def run(self) -> str:
        p = self.params
        status, body = await (self._direct(self.direct) if self.direct else self._with_aiohttp())
        if not any(low <= status <= high for low, high in p.status):
            raise CheckFailure(f"HTTP {status} from {self.shown_url} (expected {_ranges(p.status)})")
        if self.body_pattern and not self.body_pattern.search(body.decode("utf-8", "replace")):
            raise CheckFailure(f"HTTP {status}, but the body does not match /{self.body_pattern.pattern}/")
        return f"HTTP {status}"

    async def _with_aiohttp(self) -> tuple[int, bytes]:
        if self.session is None:
            # A new connection for every request, like the kubelet: a dead listener must show.
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, ssl=self.params.tls_verify),
                headers={"User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None),
            )
        p = self.params
        try:
            async with self.session.request(p.method, p.url, headers=dict(p.headers), allow_redirects=False) as resp:
                body = await resp.content.read(MAX_BODY) if self.body_pattern else b""
                return resp.status, body
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                raise CheckFailure(f"connection refused by {exc.host}:{exc.port}") from None
            raise CheckFailure(f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise CheckFailure(f"{p.method} {self.shown_url} failed: {type(exc).__name__}: {exc}") from None

    async def _direct(self, direct: _Direct) -> tuple[int, bytes]:
        """Plain http to an IP address: the request on a bare non-blocking socket, new for every run like the
        kubelet's, and only as much of the answer read as the check needs (the head; the body with expect_body)."""
        loop = asyncio.get_running_loop()
        sock = await open_first(loop, direct.addresses, direct.where)
        try:
            try:
                await loop.sock_sendall(sock, direct.request)
                return await _read_response(loop, sock, self.body_pattern is not None and self.params.method != "HEAD")
            except _BadResponse as exc:
                raise CheckFailure(f"{self.params.method} {self.shown_url} failed: {exc}") from None
            except OSError as exc:
                raise CheckFailure(f"{self.params.method} {self.shown_url} failed: {type(exc).__name__}: "
                                   f"{exc.strerror or exc}") from None
        finally:
            sock.close()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


USER_AGENT = f"sidecar-agent/{__version__}"
MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class _Direct:
    # (family, getaddrinfo sockaddr) to try in turn: one for an IP address, both loopbacks for localhost
    addresses: list[tuple[int, Any]]
    where: str  # host:port, as the messages name it
    request: bytes


def _direct_request(params: Params) -> _Direct | None:
    """The request bytes for plain http to an IP address, or None when aiohttp must do it (https, a host name,
    a URL or header that needs quoting)."""
    parts = urlsplit(params.url)
    host, target = parts.hostname or "", (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        port = parts.port or 80
    except ValueError:
        return None
    addresses = numeric_address(host, port)
    if not addresses:
        return None
    texts = [target, *(k for k, _ in params.headers), *(v for _, v in params.headers)]
    if parts.scheme != "http" or not all(t.isprintable() and t.isascii() for t in texts) or " " in target:
        return None
    shown_host = f"[{host}]" if ":" in host else host
    headers = {"host": ("Host", shown_host if parts.port in (None, 80) else f"{shown_host}:{port}"),
               "user-agent": ("User-Agent", USER_AGENT), "accept": ("Accept", "*/*")}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["authorization"] = ("Authorization", "Basic " + base64.b64encode(pair).decode())
    if params.method in ("POST", "PUT"):
        headers["content-length"] = ("Content-Length", "0")
    for name, value in params.headers:
        headers[name.lower()] = (name, value)
    headers["connection"] = ("Connection", "close")
    head = f"{params.method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers.values()) + "\r\n"
    return _Direct(addresses, f"{host}:{port}", head.encode("ascii"))


class _BadResponse(Exception):
    """The server's answer is not HTTP, or it closed before answering."""


async def _read_response(loop: asyncio.AbstractEventLoop, sock: socket.socket, want_body: bool) -> tuple[int, bytes]:
    """(status, the first MAX_BODY bytes of the body when wanted) of one HTTP/1.x response."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HEAD:
                raise _BadResponse("the response's head is over 64 KiB")
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise _BadResponse("ServerDisconnectedError: Server disconnected")
            data += chunk
            continue
        head, data = data[:end].decode("latin-1"), data[end + 4:]
        line, _, fields = head.partition("\r\n")
        version, _, rest = line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit() or rest[3:4] not in ("", " "):
            raise _BadResponse(f"BadStatusLine: {line[:80]!r}")
        status = int(code)
        if 100 <= status < 200 and status != 101:  # an interim answer (100 Continue): the real one follows
            continue
        break
    if not want_body:
        return status, b""
    headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields.split("\r\n"))}
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = headers.get("content-length", "")
    wanted = min(int(length), MAX_BODY) if length.isdigit() and not chunked else MAX_BODY
    while True:
        body, complete = _dechunk(data) if chunked else (data[:wanted], len(data) >= wanted)
        if complete or len(body) >= MAX_BODY:
            return status, body[:MAX_BODY]
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            if chunked or length:
                raise _BadResponse("ClientPayloadError: Response payload is not completed")
            return status, body  # the body ends where the connection does
        data += chunk


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    """The body decoded from chunked transfer coding so far, and whether its last chunk has come."""
    body, at = b"", 0
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return body, False
        size_text = data[at:end].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BadResponse("TransferEncodingError: invalid chunk size") from None
        if size == 0:
            return body, True
        body += data[end + 2:end + 2 + size]
        if end + 2 + size + 2 > len(data):
            return body, False
        at = end + 2 + size + 2


def _ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in ranges)


def _validate(params: Params) -> str | None:
    parts = urlsplit(params.url)
    if (parts.username or parts.password) and any(k.lower() == "authorization" for k, _ in params.headers):
        return "credentials in the url and an Authorization header cannot both be sent: keep one of them"
    return None


def _create(spec: CheckSpec[Params], ctx: CheckContext) -> HttpCheck:
    return HttpCheck(spec.params)


TYPE = CheckType(
    name="http",
    fields=(
        Field("url", Url(["http", "https"]), doc="the URL to request"),
        Field("method", Enum(["GET", "HEAD", "POST", "PUT", "OPTIONS"]), doc="the request method"),
        Field("headers", StrMap(secret=True), doc="request headers; values are treated as secrets"),
        Field("status", StatusRange(), doc="status codes that pass, like 200-399"),
        optional("expect_body", Regex(), "a regex the first 10 KiB of the body must match"),
        Field("tls_verify", Bool(), doc="verify the server's certificate for https"),
    ),
    params=Params,
    create=_create,
    is_dependency=lambda params: not is_loopback_host(urlsplit(params.url).hostname or ""),
    validate=_validate,
)
