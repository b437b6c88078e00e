"""DNS messages built by hand, byte by byte, for the tests of the wire format and of the dns check's client."""

from __future__ import annotations

import ipaddress
import struct

from agent.checks.dns_wire import RECORD_TYPES

A, NS, CNAME, MX, TXT, AAAA, SRV = (RECORD_TYPES[t] for t in ("A", "NS", "CNAME", "MX", "TXT", "AAAA", "SRV"))


def wire(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label) + b"\0"


def header(query_id: int, flags: int, qd: int = 1, an: int = 0) -> bytes:
    return struct.pack("!HHHHHH", query_id, flags, qd, an, 0, 0)


def record(owner: bytes, rtype: int, rdata: bytes, ttl: int = 60) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def reply_to(query: bytes, *, rcode: int = 0, answers: list[bytes] | None = None, flags: int = 0x8180,
             query_id: int | None = None) -> bytes:
    """A response to `query` (its id and question) with these answer records."""
    (qid,) = struct.unpack_from("!H", query)
    answers = answers or []
    return header(qid if query_id is None else query_id, flags | rcode, 1, len(answers)) + query[12:] + b"".join(answers)


def compressed_answer() -> tuple[bytes, dict[str, int]]:
    """A response to `ok.test MX` whose answers use compression pointers in owners and in record data."""
    out = bytearray(header(0x4242, 0x8180, 1, 7))
    at = {"question": len(out)}
    out += wire("ok.test") + struct.pack("!HH", MX, 1)
    # MX 10 mail.<ok.test>: a label, then a pointer to the question's name
    at["mx_rdata"] = len(out) + 2 + 10
    out += record(pointer(at["question"]), MX, struct.pack("!H", 10) + b"\x04mail" + pointer(at["question"]))
    at["mail"] = at["mx_rdata"] + 2  # where `mail.ok.test` starts, inside the MX data
    at["a_record"] = len(out)
    out += record(pointer(at["mail"]), A, bytes([192, 0, 2, 1]))  # owner: a pointer into another record's data
    out += record(pointer(at["question"]), SRV, struct.pack("!HHH", 1, 5, 8080) + pointer(at["mail"]))
    out += record(b"\x03txt" + pointer(at["question"]), TXT, b"\x0bhello world" + b'\x09say "hi"\\' + b"\x00")
    out += record(pointer(at["mail"]), AAAA, ipaddress.IPv6Address("2001:db8::1").packed)
    out += record(pointer(at["question"]), 99, b"abc")
    out += record(b"\x05alias" + pointer(at["question"]), CNAME, wire("x.y"))
    return bytes(out), at
