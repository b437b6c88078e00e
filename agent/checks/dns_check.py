"""`dns`: a name resolves, through the system resolver as the app would, or by asking a nameserver.

Without `nameserver`, an A or AAAA check calls getaddrinfo (through the loop's executor), which is the
path the app takes: /etc/hosts, nsswitch, the pod's search domains. Other record types, and every type
when `nameserver` is set, are asked of a nameserver directly by the small DNS client below (UDP, then
TCP when the answer is truncated); without `nameserver` that is the first one in /etc/resolv.conf.
The name is then asked as written, an absolute name: no search domains apply.

A reply that never comes is left to the engine, which cancels the run at the check's `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckType
from agent.fields import Address, Bool, Enum, Field, Invalid, Problems, Str, optional
from agent.units import format_address, parse_address

RECORD_TYPES = {"A": 1, "AAAA": 28, "CNAME": 5, "MX": 15, "NS": 2, "SRV": 33, "TXT": 16}
TYPE_NAMES = {number: name for name, number in RECORD_TYPES.items()}
CLASS_IN = 1
RESOLV_CONF = "/etc/resolv.conf"
DNS_PORT = 53
SHOWN_ANSWERS = 4  # the success message lists this many answers, then counts the rest
SHOWN_TEXT = 60  # characters of each TXT string in the success message

# Header flags.
QR = 0x8000
OPCODE = 0x7800
TC = 0x0200
RD = 0x0100
RCODE = 0x000F
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
MAX_POINTERS = 64  # compression pointers followed in one name; each must also point backwards


# -- the wire format ---------------------------------------------------------------------------------


class MalformedMessage(CheckFailure):
    """A DNS message that cannot be parsed; the message says where it went wrong."""


@dataclass(frozen=True)
class Record:
    name: str  # the owner, in presentation form without the final dot
    rtype: int
    ttl: int
    data: str  # the record data in presentation form: an address, a name, `10 mail.example`, `"text"`


@dataclass(frozen=True)
class Message:
    id: int
    flags: int
    question: tuple[bytes, int, int] | None  # (lower-cased wire name, qtype, qclass); None when qdcount is 0
    answers: tuple[Record, ...]  # when truncated (TC), those that came whole

    @property
    def rcode(self) -> int:
        return self.flags & RCODE

    @property
    def truncated(self) -> bool:
        return bool(self.flags & TC)


def encode_name(name: str) -> bytes:
    """The wire form of a name (labels, then the root); raises ValueError when it is not a valid DNS name."""
    text = name[:-1] if name.endswith(".") and name != "." else name
    if text in ("", "."):
        raise ValueError("the name is empty")
    out = bytearray()
    for label in text.split("."):
        if not label:
            raise ValueError(f"{name!r} has an empty label")
        try:
            raw = label.encode("ascii") if label.isascii() else label.encode("idna")
        except UnicodeError as exc:
            raise ValueError(f"{name!r} is not a valid international name: {exc}") from None
        if len(raw) > 63:
            raise ValueError(f"a label of {name!r} is longer than 63 bytes")
        if any(byte <= 0x20 or byte == 0x7F for byte in raw):
            raise ValueError(f"{name!r} contains a space or a control character")
        out += bytes([len(raw)]) + raw
    out += b"\0"
    if len(out) > 255:
        raise ValueError(f"{name!r} is longer than 253 characters")
    return bytes(out)


def encode_query(query_id: int, name: str, qtype: int) -> bytes:
    """A standard query for one question, recursion desired, without EDNS (answers over 512 bytes come by TCP)."""
    return struct.pack("!HHHHHH", query_id, RD, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def parse_message(data: bytes) -> Message:
    """Parse a DNS response: the header, the question and the answer section (not authority or additional).

    Every defect raises MalformedMessage (a CheckFailure), never IndexError or struct.error.
    """
    if len(data) < 12:
        raise MalformedMessage(f"{len(data)} bytes, shorter than a DNS header")
    query_id, flags, qdcount, ancount, _, _ = struct.unpack_from("!HHHHHH", data)
    if not flags & QR:
        raise MalformedMessage("a query, not a response")
    if flags & OPCODE:
        raise MalformedMessage(f"unexpected opcode {(flags & OPCODE) >> 11}")
    if qdcount > 1:
        raise MalformedMessage(f"{qdcount} questions in a response to one")
    pos = 12
    question = None
    if qdcount == 1:
        wire, pos = _read_wire_name(data, pos)
        qtype, qclass = _unpack(data, pos, "!HH", "the question")
        pos += 4
        question = (wire.lower(), qtype, qclass)
    answers: list[Record] = []
    for index in range(ancount):
        try:
            record, pos = _read_record(data, pos, index + 1)
        except MalformedMessage:
            if flags & TC:  # a truncated message may end in the middle of a record: keep those before it
                break
            raise
        answers.append(record)
    return Message(query_id, flags, question, tuple(answers))


def _unpack(data: bytes, pos: int, fmt: str, what: str) -> tuple[int, ...]:
    if pos + struct.calcsize(fmt) > len(data):
        raise MalformedMessage(f"{what} runs past the end of the message")
    return struct.unpack_from(fmt, data, pos)


def _read_wire_name(data: bytes, pos: int) -> tuple[bytes, int]:
    """(the name in uncompressed wire form, the position after it), following compression pointers."""
    out = bytearray()
    end: int | None = None  # where the name ends in the message: after its first pointer, if any
    pointers = 0
    while True:
        if pos >= len(data):
            raise MalformedMessage("a name runs past the end of the message")
        length = data[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise MalformedMessage("a compression pointer runs past the end of the message")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if end is None:
                end = pos + 2
            pointers += 1
            if target >= pos or pointers > MAX_POINTERS:  # backwards only: no loops
                raise MalformedMessage(f"a compression pointer to offset {target} does not point backwards")
            pos = target
            continue
        if kind:
            raise MalformedMessage(f"unknown label type 0x{kind:02x}")
        if pos + 1 + length > len(data):
            raise MalformedMessage("a label runs past the end of the message")
        out += data[pos:pos + 1 + length]
        pos += 1 + length
        if len(out) > 255:
            raise MalformedMessage("a name longer than 255 bytes")
        if length == 0:
            return bytes(out), end if end is not None else pos


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    wire, pos = _read_wire_name(data, pos)
    return wire_to_text(wire), pos


def wire_to_text(wire: bytes) -> str:
    """A wire name in presentation form, without the final dot; odd bytes escaped as \\DDD."""
    labels = []
    pos = 0
    while wire[pos]:
        label = wire[pos + 1:pos + 1 + wire[pos]]
        labels.append("".join(_escape(byte, b".\\") for byte in label))
        pos += 1 + wire[pos]
    return ".".join(labels) or "."


def _escape(byte: int, special: bytes) -> str:
    if byte in special:
        return "\\" + chr(byte)
    return chr(byte) if 0x20 < byte < 0x7F else f"\\{byte:03d}"


def _read_record(data: bytes, pos: int, number: int) -> tuple[Record, int]:
    name, pos = _read_name(data, pos)
    rtype, rclass, ttl, rdlength = _unpack(data, pos, "!HHIH", f"answer {number}")
    pos += 10
    end = pos + rdlength
    if end > len(data):
        raise MalformedMessage(f"the data of answer {number} runs past the end of the message")
    what = f"the {TYPE_NAMES.get(rtype, f'type {rtype}')} data of answer {number}"
    text = _read_rdata(data, pos, end, rtype, what) if rclass == CLASS_IN else f"\\# {rdlength} (class {rclass})"
    return Record(name, rtype, ttl, text), end


def _read_rdata(data: bytes, pos: int, end: int, rtype: int, what: str) -> str:
    rdata = data[pos:end]
    if rtype in (RECORD_TYPES["A"], RECORD_TYPES["AAAA"]):
        size = 4 if rtype == RECORD_TYPES["A"] else 16
        if len(rdata) != size:
            raise MalformedMessage(f"{what} is {len(rdata)} bytes, not {size}")
        return str(ipaddress.ip_address(rdata))
    if rtype in (RECORD_TYPES["CNAME"], RECORD_TYPES["NS"], RECORD_TYPES["MX"], RECORD_TYPES["SRV"]):
        prefix: tuple[int, ...] = ()
        if rtype == RECORD_TYPES["MX"]:
            prefix = _unpack(data[:end], pos, "!H", what)
        elif rtype == RECORD_TYPES["SRV"]:
            prefix = _unpack(data[:end], pos, "!HHH", what)
        target, after = _read_name(data[:end], pos + 2 * len(prefix))  # the name may point back before pos
        if after != end:
            raise MalformedMessage(f"{what} does not end where its length says")
        return " ".join([*map(str, prefix), target])
    if rtype == RECORD_TYPES["TXT"]:
        strings = []
        while pos < end:
            length = data[pos]
            if pos + 1 + length > end:
                raise MalformedMessage(f"a string in {what} runs past its end")
            strings.append('"' + "".join(_escape(b, b'"\\') if b != 0x20 else " " for b in data[pos + 1:pos + 1 + length]) + '"')
            pos += 1 + length
        return " ".join(strings)
    return f"\\# {len(rdata)} {rdata.hex()}".rstrip()


# -- the client --------------------------------------------------------------------------------------


def answers_question(message: Message, wire_name: bytes, qtype: int) -> bool:
    """Whether a response is to our question (a server may leave the question out of an error)."""
    if message.question is None:
        return message.rcode != 0
    return message.question == (wire_name.lower(), qtype, CLASS_IN)


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
        self.lookup: asyncio.Task[list[Any]] | None = None  # a getaddrinfo in its thread, maybe from an earlier run

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
            self.lookup = asyncio.ensure_future(loop.getaddrinfo(p.name, None, family=family, type=socket.SOCK_STREAM))
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
        Field("record_type", Enum(list(RECORD_TYPES), ignore_case=True), "A",
              "A, AAAA, CNAME, MX, NS, SRV or TXT"),
        optional("nameserver", Nameserver(),
                 "host:port of a nameserver to ask directly; without it A and AAAA go through the system "
                 "resolver (getaddrinfo) and other types to the first nameserver of /etc/resolv.conf"),
        Field("require_records", Bool(), True, "fail on an answer with no records of the type"),
    ),
    params=Params,
    create=_create,
    is_dependency=lambda params: True,  # even a nameserver on loopback answers for names elsewhere
    validate=_validate,
)
