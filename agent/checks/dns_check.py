"""`dns`: a name resolves, through the system resolver as the app would, or by asking a nameserver.

Without `nameserver`, an A or AAAA check calls getaddrinfo (through the loop's executor), which is the
path the app takes: /etc/hosts, nsswitch, the pod's search domains. Other record types, and every type
when `nameserver` is set, are asked of a nameserver directly by the small DNS client below (UDP, then
TCP when the answer is truncated; the wire format is `dns_wire`'s); without `nameserver` that is the first
one in /etc/resolv.conf.
The name is then asked as written, an absolute name: no search domains apply.

A reply that never comes is left to the engine, which cancels the run at the check's `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckType
from agent.checks.dns_wire import (
    QR,
    RCODES,
    RECORD_TYPES,
    MalformedMessage,
    Message,
    answers_question,
    encode_name,
    encode_query,
    parse_message,
)
from agent.fields import Address, Bool, Enum, Field, Invalid, Problems, Str, optional
from agent.units import format_address, parse_address

RESOLV_CONF = "/etc/resolv.conf"
DNS_PORT = 53
SHOWN_ANSWERS = 4  # the success message lists this many answers, then counts the rest
SHOWN_TEXT = 60  # characters of each TXT string in the success message


# -- the client --------------------------------------------------------------------------------------


class _UdpExchange(asyncio.DatagramProtocol):
    """Waits for the one datagram that answers our query; others (late, stray or spoofed) are dropped."""

    def __init__(self, query_id: int, wire_name: bytes, qtype: int) -> None:
        self.query_id, self.wire_name, self.qtype = query_id, wire_name, qtype
        self.answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.answer.done() or len(data) < 4:
            return
        query_id, flags = struct.unpack_from("!HH", data)
        if query_id != self.query_id or not flags & QR:
            return
        try:
            message = parse_message(data)
        except MalformedMessage as exc:
            self.answer.set_exception(exc)
            return
        if answers_question(message, self.wire_name, self.qtype):
            self.answer.set_result(message)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionError("the socket closed"))


async def query_udp(host: str, port: int, name: str, qtype: int, *, retry_after: float = 0.5) -> Message:
    """Ask over UDP, sending the query again after `retry_after` (doubling) until an answer comes or the run is cancelled."""
    query_id = secrets.randbits(16)
    query = encode_query(query_id, name, qtype)
    wire_name = encode_name(name)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _UdpExchange(query_id, wire_name, qtype), remote_addr=(host, port))
    try:
        delay = retry_after
        while True:
            transport.sendto(query)
            done, _ = await asyncio.wait({protocol.answer}, timeout=delay)
            if done:
                return protocol.answer.result()
            delay *= 2
    finally:
        transport.close()
        if protocol.answer.done() and not protocol.answer.cancelled():
            protocol.answer.exception()  # retrieved, so asyncio does not log it as forgotten
        else:
            protocol.answer.cancel()


async def query_tcp(host: str, port: int, name: str, qtype: int) -> Message:
    """Ask over TCP: a two-byte length, then the message, each way."""
    query_id = secrets.randbits(16)
    query = encode_query(query_id, name, qtype)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            message = parse_message(await reader.readexactly(length))
            if message.id == query_id and answers_question(message, encode_name(name), qtype):
                return message
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def query(host: str, port: int, name: str, qtype: int, *, retry_after: float = 0.5) -> Message:
    """Ask a nameserver, by UDP and then by TCP when the answer was truncated; failures as CheckFailure."""
    server = format_address(host, port)
    try:
        message = await query_udp(host, port, name, qtype, retry_after=retry_after)
    except MalformedMessage as exc:
        raise CheckFailure(f"malformed answer from {server}: {exc}") from None
    except ConnectionRefusedError:
        raise CheckFailure(f"no DNS server at {server} (connection refused)") from None
    except OSError as exc:
        raise CheckFailure(f"cannot ask {server}: {exc.strerror or exc}") from None
    if not message.truncated:
        return message
    try:
        return await query_tcp(host, port, name, qtype)
    except MalformedMessage as exc:
        raise CheckFailure(f"malformed answer from {server} over TCP: {exc}") from None
    except asyncio.IncompleteReadError:
        raise CheckFailure(f"the answer from {server} was truncated, and it closed the TCP connection "
                           "before answering in full") from None
    except ConnectionRefusedError:
        raise CheckFailure(f"the answer from {server} was truncated, and it refused the TCP connection "
                           "to ask again") from None
    except OSError as exc:
        raise CheckFailure(f"the answer from {server} was truncated, and asking again over TCP failed: "
                           f"{exc.strerror or exc}") from None


def first_nameserver(text: str) -> tuple[str, int] | None:
    """The first `nameserver` of resolv.conf text, on port 53."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            return words[1], DNS_PORT
    return None


# -- the check ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    name: str
    record_type: str = "A"
    nameserver: tuple[str, int] | None = None
    require_records: bool = True


class DnsCheck:
    def __init__(self, params: Params, timeout: float) -> None:
        self.params = params
        self.qtype = RECORD_TYPES[params.record_type]
        # Resend a UDP query that got no answer a few times within the run's timeout.
        self.retry_after = min(1.0, max(0.1, timeout / 4))
        self.lookup: asyncio.Future[list[Any]] | None = None  # a getaddrinfo in its thread, maybe from an earlier run

    async def run(self) -> str:
        p = self.params
        if p.nameserver is not None:
            return await self._ask(*p.nameserver)
        if p.record_type in ("A", "AAAA"):
            return await self._getaddrinfo()
        try:
            server = first_nameserver(await asyncio.to_thread(_read_text, RESOLV_CONF))
        except OSError as exc:
            raise CheckFailure(f"cannot read {RESOLV_CONF} to find a nameserver: {exc.strerror or exc}") from None
        if server is None:
            raise CheckFailure(f"{RESOLV_CONF} names no nameserver (or set the check's nameserver)")
        return await self._ask(*server)

    async def _ask(self, host: str, port: int) -> str:
        p = self.params
        message = await query(host, port, p.name, self.qtype, retry_after=self.retry_after)
        server = format_address(host, port)
        rcode = message.rcode
        if rcode == 3:
            raise CheckFailure(f"NXDOMAIN: {p.name} does not exist (answer from {server})")
        if rcode == 2:
            raise CheckFailure(f"SERVFAIL: {server} could not resolve {p.name}")
        if rcode == 5:
            raise CheckFailure(f"REFUSED: {server} refused to answer for {p.name}")
        if rcode:
            raise CheckFailure(f"{RCODES.get(rcode, f'rcode {rcode}')} from {server} for {p.name} {p.record_type}")
        found = [r.data for r in message.answers if r.rtype == self.qtype]
        via = [r.data for r in message.answers if r.rtype == RECORD_TYPES["CNAME"]] if p.record_type != "CNAME" else []
        return self._report(found, f" (via CNAME {via[-1]})" if via else "")

    async def _getaddrinfo(self) -> str:
        p = self.params
        family = socket.AF_INET if p.record_type == "A" else socket.AF_INET6
        if self.lookup is None or self.lookup.done():
            # One lookup at a time: a run that timed out leaves its thread resolving, and the next run
            # waits for that one rather than start another (a resolver that hangs must not use up threads).
            loop = asyncio.get_running_loop()
            # A plain future of the lookup's thread (what loop.getaddrinfo runs), not a task of its own.
            self.lookup = loop.run_in_executor(None, socket.getaddrinfo, p.name, None, family, socket.SOCK_STREAM)
            self.lookup.add_done_callback(_retrieve)
        try:
            infos = await asyncio.shield(self.lookup)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_NONAME:
                raise CheckFailure(f"NXDOMAIN: {p.name} does not resolve") from None
            if exc.errno in (getattr(socket, "EAI_NODATA", None), getattr(socket, "EAI_ADDRFAMILY", None)):
                return self._report([], "")
            if exc.errno == socket.EAI_AGAIN:
                raise CheckFailure(f"cannot resolve {p.name} now: {exc.strerror} "
                                   "(a nameserver failed or did not answer)") from None
            raise CheckFailure(f"cannot resolve {p.name}: {exc.strerror or exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        return self._report(addresses, "")

    def _report(self, found: Sequence[str], via: str) -> str:
        p = self.params
        if not found:
            if p.require_records:
                raise CheckFailure(f"no {p.record_type} records for {p.name}")
            return f"no {p.record_type} records for {p.name} (require_records is false)"
        shown = [_shorten(data) for data in found[:SHOWN_ANSWERS]]
        more = f" (+{len(found) - SHOWN_ANSWERS} more)" if len(found) > SHOWN_ANSWERS else ""
        return f"{p.name} {p.record_type} {', '.join(shown)}{more}{via}"

    async def close(self) -> None:
        if self.lookup is not None and not self.lookup.done():
            self.lookup.cancel()


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _retrieve(task: asyncio.Future[list[Any]]) -> None:
    """Fetch a finished lookup's exception, so that one nobody awaited (its run timed out) is not logged."""
    if not task.cancelled():
        task.exception()


def _shorten(data: str) -> str:
    return data if len(data) <= SHOWN_TEXT else data[:SHOWN_TEXT - 3] + "..."


class Nameserver(Address):
    """`host:port`, `[v6]:port`, or a bare host or IPv6 address on port 53."""

    def shape(self) -> str:
        return "host or host:port"

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            if ":" not in text or (text.count(":") > 1 and not text.startswith("[")):
                if not text:
                    raise Invalid("expected a nameserver like 10.96.0.10 or 10.96.0.10:53")
                return text, DNS_PORT
            try:
                return parse_address(text)
            except ValueError as exc:
                raise Invalid(str(exc)) from None
        raise Invalid(f"expected a nameserver like 10.96.0.10 or 10.96.0.10:53, got {value!r}")

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1}


def _validate(params: Params) -> str | None:
    try:
        encode_name(params.name)
    except ValueError as exc:
        return f"name: {exc}"
    return None


def _create(spec: CheckSpec[Params], ctx: CheckContext) -> DnsCheck:
    return DnsCheck(spec.params, spec.timeout)


TYPE = CheckType(
    name="dns",
    fields=(
        Field("name", Str(), doc="the name to resolve"),
        Field("record_type", Enum(list(RECORD_TYPES), ignore_case=True),
              doc="A, AAAA, CNAME, MX, NS, SRV or TXT"),
        optional("nameserver", Nameserver(),
                 "host:port of a nameserver to ask directly; without it A and AAAA go through the system "
                 "resolver (getaddrinfo) and other types to the first nameserver of /etc/resolv.conf"),
        Field("require_records", Bool(), doc="fail on an answer with no records of the type"),
    ),
    params=Params,
    create=_create,
    is_dependency=lambda params: True,  # even a nameserver on loopback answers for names elsewhere
    validate=_validate,
)
