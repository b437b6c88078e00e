"""The DNS wire format (agent/checks/dns_wire.py) on bytes built here: queries, parsing, and every defect refused.

A response is untrusted input: whatever the bytes, parsing either gives a Message or raises MalformedMessage.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.checks.dns_wire import MalformedMessage, Message, answers_question, encode_name, encode_query, parse_message
from tests.dns_messages import AAAA, CNAME, MX, SRV, TXT, A, compressed_answer, header, pointer, record, wire


def test_a_query_is_one_question_with_recursion_desired_and_no_edns() -> None:
    assert encode_query(0x1234, "ok.test", MX) == (
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x02ok\x04test\x00" + b"\x00\x0f\x00\x01")
    assert encode_query(1, "ok.test.", A)[12:] == encode_query(1, "ok.test", A)[12:]


def test_names_are_checked_before_they_are_sent() -> None:
    assert encode_name("_http._tcp.srv.test") == b"\x05_http\x04_tcp\x03srv\x04test\x00"
    assert encode_name("bücher.test") == b"\x0dxn--bcher-kva\x04test\x00"
    for bad in ("", ".", "a..b", "a b.test", "x" * 64 + ".test", ".".join(["abcdefghi"] * 26)):
        with pytest.raises(ValueError):
            encode_name(bad)


def test_an_answer_with_compression_pointers_is_parsed() -> None:
    data, _ = compressed_answer()
    message = parse_message(data)
    assert (message.id, message.rcode, message.truncated) == (0x4242, 0, False)
    assert message.question == (wire("ok.test"), MX, 1)
    assert [(r.name, r.rtype, r.data) for r in message.answers] == [
        ("ok.test", MX, "10 mail.ok.test"),
        ("mail.ok.test", A, "192.0.2.1"),
        ("ok.test", SRV, "1 5 8080 mail.ok.test"),
        ("txt.ok.test", TXT, '"hello world" "say \\"hi\\"\\\\" ""'),
        ("mail.ok.test", AAAA, "2001:db8::1"),
        ("ok.test", 99, "\\# 3 616263"),
        ("alias.ok.test", CNAME, "x.y"),
    ]
    assert answers_question(message, wire("OK.Test"), MX)
    assert not answers_question(message, wire("ok.test"), A)
    assert not answers_question(message, wire("other.test"), MX)


def test_every_truncation_of_an_answer_is_refused() -> None:
    data, _ = compressed_answer()
    for end in range(len(data)):
        with pytest.raises(MalformedMessage):
            parse_message(data[:end])


def test_a_truncated_answer_keeps_the_records_that_came_whole() -> None:
    data, _ = compressed_answer()
    cut = bytearray(data[:64])
    cut[2] |= 0x02  # TC
    message = parse_message(bytes(cut))
    assert message.truncated and [r.rtype for r in message.answers] == [MX, A]


@pytest.mark.parametrize(("change", "reason"), [
    (lambda d, at: d[:2] + b"\x01\x00" + d[4:], "a query, not a response"),
    (lambda d, at: d[:4] + b"\x00\x02" + d[6:], "2 questions"),
    (lambda d, at: d[:2] + b"\xa9\x80" + d[4:], "unexpected opcode 5"),
    # the first answer's owner points at itself, then at a later byte
    (lambda d, at: d[:25] + pointer(25) + d[27:], "does not point backwards"),
    (lambda d, at: d[:25] + pointer(40) + d[27:], "does not point backwards"),
    (lambda d, at: d[:12] + b"\x42" + d[13:], "unknown label type 0x40"),
    # the A record says 5 bytes of data
    (lambda d, at: d[:at["a_record"] + 10] + b"\x00\x05" + d[at["a_record"] + 12:], "is 5 bytes, not 4"),
])
def test_a_malformed_answer_is_refused_with_a_reason(change: Any, reason: str) -> None:
    data, at = compressed_answer()
    with pytest.raises(MalformedMessage, match=reason):
        parse_message(change(data, at))


def test_records_whose_data_disagrees_with_their_length_are_refused() -> None:
    question = header(1, 0x8180, 1, 1) + wire("ok.test") + struct.pack("!HH", A, 1)
    with pytest.raises(MalformedMessage, match="is 5 bytes, not 4"):
        parse_message(question + record(pointer(12), A, b"\x7f\x00\x00\x01\x00"))
    with pytest.raises(MalformedMessage, match="does not end where its length says"):
        parse_message(question + record(pointer(12), CNAME, wire("a.b") + b"\x00"))
    with pytest.raises(MalformedMessage, match="runs past"):
        parse_message(question + record(pointer(12), MX, b"\x00"))
    with pytest.raises(MalformedMessage, match="runs past its end"):
        parse_message(question + record(pointer(12), TXT, b"\x05abc"))


def test_a_name_longer_than_255_bytes_through_pointers_is_refused() -> None:
    out = bytearray(header(1, 0x8180, 1, 2) + wire("ok.test") + struct.pack("!HH", A, 1))
    chain = bytearray()  # the data of a first record: 63-byte labels, each pointing back to the one before
    start = len(out) + 2 + 10
    previous = 12
    for _ in range(5):
        here = start + len(chain)
        chain += b"\x3f" + b"x" * 63 + pointer(previous)
        previous = here
    out += record(pointer(12), 99, bytes(chain))
    out += record(pointer(previous), A, b"\x7f\x00\x00\x01")
    with pytest.raises(MalformedMessage, match="longer than 255"):
        parse_message(bytes(out))


# -- fuzzing: only MalformedMessage ever comes out -----------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_refuse(data: bytes) -> Message | None:
    """The parsed message, or None when it was refused; any other exception fails the test."""
    try:
        message = parse_message(data)
    except MalformedMessage as exc:
        assert str(exc)  # the refusal says why
        return None
    assert len(message.answers) <= struct.unpack_from("!H", data, 6)[0]
    assert all(isinstance(r.data, str) and isinstance(r.name, str) for r in message.answers)
    return message


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_are_refused(data: bytes) -> None:
    parse_or_refuse(data)


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_after_a_response_header_parse_or_are_refused(tail: bytes) -> None:
    parse_or_refuse(header(1, 0x8180, 1, 4) + tail)


@FUZZ
@given(st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=6),
       st.integers(min_value=0), st.booleans())
def test_a_mutated_answer_parses_or_is_refused(changes: list[tuple[int, int]], cut: int, truncated: bool) -> None:
    data = bytearray(compressed_answer()[0])
    for position, value in changes:
        data[position % len(data)] = value
    if truncated:
        data[2] |= 0x02  # TC: a message that may end inside a record
    parse_or_refuse(bytes(data[:max(12, cut % (len(data) + 1))]))


RDATA = st.one_of(st.binary(max_size=40), st.just(b"\x7f\x00\x00\x01"), st.just(ipaddress.IPv6Address("::1").packed),
                  st.builds(lambda n: wire(n), st.from_regex(r"[a-z]{1,10}(\.[a-z]{1,10}){0,3}", fullmatch=True)),
                  st.builds(lambda o: struct.pack("!H", 10) + pointer(o), st.integers(0, 0x3FFF)))
RECORDS = st.lists(st.tuples(st.one_of(st.integers(0, 0x3FFF).map(pointer), st.binary(max_size=20)),
                             st.sampled_from([A, AAAA, CNAME, MX, SRV, TXT, 2, 99, 0, 0xFFFF]),
                             st.sampled_from([1, 1, 3, 255]), RDATA), max_size=6)


@FUZZ
@given(st.integers(0, 0xFFFF), st.integers(0, 3), st.integers(0, 12), RECORDS)
def test_responses_of_random_records_parse_or_are_refused(flags: int, questions: int, answers: int,
                                                         records: list[tuple[bytes, int, int, bytes]]) -> None:
    body = b"".join(owner + struct.pack("!HHIH", rtype, rclass, 60, len(rdata)) + rdata
                    for owner, rtype, rclass, rdata in records)
    question = (wire("ok.test") + struct.pack("!HH", A, 1)) * questions
    parse_or_refuse(header(7, flags | 0x8000, questions, answers) + question + body)
