"""The DNS wire format: queries out, responses in (RFC 1035), for the `dns` check's client.

Responses are untrusted bytes from the network: `parse_message` refuses every defect with MalformedMessage,
never IndexError, struct.error or a loop (compression pointers must point backwards). Standard library only.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

RECORD_TYPES = {"A": 1, "AAAA": 28, "CNAME": 5, "MX": 15, "NS": 2, "SRV": 33, "TXT": 16}
TYPE_NAMES = {number: name for name, number in RECORD_TYPES.items()}
CLASS_IN = 1

# Header flags.
QR = 0x8000
OPCODE = 0x7800
TC = 0x0200
RD = 0x0100
RCODE = 0x000F
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
MAX_POINTERS = 64  # compression pointers followed in one name; each must also point backwards


class MalformedMessage(ValueError):
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

    Every defect raises MalformedMessage, never IndexError or struct.error.
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


def answers_question(message: Message, wire_name: bytes, qtype: int) -> bool:
    """Whether a response is to our question (a server may leave the question out of an error)."""
    if message.question is None:
        return message.rcode != 0
    return message.question == (wire_name.lower(), qtype, CLASS_IN)
