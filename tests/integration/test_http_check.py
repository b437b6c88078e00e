"""The http check's own client (plain http to an IP address) against scripted loopback servers: what it sends,
how it reads each kind of answer, and what it says when the answer is not HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from agent.checks import CheckFailure
from agent.checks.http_check import HttpCheck, Params


class Scripted:
    """Accepts connections and answers each with `reply` (bytes, sent in pieces), keeping what was asked."""

    def __init__(self, *pieces: bytes, close: bool = True) -> None:
        self.pieces, self.close = pieces, close
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str = "/healthz") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # before anything else, so that stop() can wake and close it
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                for piece in self.pieces:
                    conn.sendall(piece)
            except OSError:
                pass  # the check hung up first: what it read is what the test looks at
            if self.close:
                conn.close()

    def stop(self) -> None:
        """Stop accepting, wake the thread wherever it waits, and close every connection once it is done."""
        for sock in (self.sock, *self.accepted):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def scripted() -> Iterator[list[Scripted]]:
    started: list[Scripted] = []
    yield started
    for server in started:
        server.stop()


def check(url: str, **params: object) -> HttpCheck:
    made = HttpCheck(Params(url=url, **params))  # type: ignore[arg-type]
    assert made.direct is not None, "plain http to an IP address goes the direct way"
    return made


async def test_a_request_names_the_host_agent_and_headers_and_asks_to_close(scripted: list[Scripted]) -> None:
    server = Scripted(b"HTTP/1.1 204 No Content\r\n\r\n")
    scripted.append(server)
    assert await check(server.url("/ready?full=1"), headers=(("X-Probe", "yes"),)).run() == "HTTP 204"
    head = server.requests[0].decode()
    assert head.startswith("GET /ready?full=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in head and "User-Agent: sidecar-agent/" in head
    assert "X-Probe: yes\r\n" in head and "Connection: close\r\n" in head


async def test_credentials_in_the_url_become_basic_auth(scripted: list[Scripted]) -> None:
    server = Scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    scripted.append(server)
    await check(f"http://user:p%40ss@127.0.0.1:{server.port}/").run()
    assert b"Authorization: Basic dXNlcjpwQHNz\r\n" in server.requests[0]  # user:p@ss


@pytest.mark.parametrize("pieces", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", b"hello", b" world"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"6;x=y\r\n world\r\n0\r\n\r\n"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nhello", b" world"),  # ends with the connection
])
async def test_the_body_is_read_however_it_is_framed(scripted: list[Scripted], pieces: tuple[bytes, ...]) -> None:
    server = Scripted(*pieces)
    scripted.append(server)
    assert await check(server.url(), expect_body="hello world").run() == "HTTP 200"
    with pytest.raises(CheckFailure, match="the body does not match /goodbye/"):
        await check(server.url(), expect_body="goodbye").run()


async def test_without_expect_body_the_head_is_enough_even_if_the_server_keeps_the_connection(
        scripted: list[Scripted]) -> None:
    server = Scripted(b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\npartial", close=False)
    scripted.append(server)
    with pytest.raises(CheckFailure, match=rf"HTTP 503 from {server.url()} \(expected 200-399\)"):
        await check(server.url()).run()


@pytest.mark.parametrize(("pieces", "message"), [
    ((), "GET {url} failed: ServerDisconnectedError: Server disconnected"),
    ((b"SSH-2.0-OpenSSH\r\n\r\n",), "GET {url} failed: BadStatusLine: 'SSH-2.0-OpenSSH'"),
    ((b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort",),
     "GET {url} failed: ClientPayloadError: Response payload is not completed"),
])
async def test_an_answer_that_is_not_http_fails_the_check_saying_why(scripted: list[Scripted], pieces: tuple[bytes, ...],
                                                                     message: str) -> None:
    server = Scripted(*pieces)
    scripted.append(server)
    with pytest.raises(CheckFailure) as failed:
        await check(server.url(), expect_body="x").run()
    assert str(failed.value) == message.format(url=server.url())


async def test_a_closed_port_is_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with pytest.raises(CheckFailure, match=f"connection refused by 127.0.0.1:{port}"):
        await check(f"http://127.0.0.1:{port}/").run()


def test_https_and_host_names_go_through_aiohttp() -> None:
    assert HttpCheck(Params(url="https://127.0.0.1:8443/")).direct is None
    assert HttpCheck(Params(url="http://db.example:8080/")).direct is None
    assert HttpCheck(Params(url="http://[::1]:8080/")).direct is not None
    # localhost needs no lookup: both loopbacks, IPv4 first (most apps listen there).
    local = HttpCheck(Params(url="http://localhost:8080/")).direct
    assert local is not None and [address[0] for _, address in local.addresses] == ["127.0.0.1", "::1"]
