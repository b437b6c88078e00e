"""The dns check: its wire format on bytes built here, and the real agent against real DNS servers on loopback.

No query leaves this machine: the nameserver tests ask dnsmasq (no upstream) or a scripted UDP responder on
127.0.0.1, and the system-resolver tests resolve `localhost`, or run the agent with its own /etc/hosts and
/etc/resolv.conf (a private mount namespace) pointing at a dnsmasq on a loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.checks import CheckFailure
from agent.checks.dns_check import (
    RECORD_TYPES,
    DnsCheck,
    MalformedMessage,
    Params,
    answers_question,
    encode_name,
    encode_query,
    first_nameserver,
    parse_message,
)
from agent.config import ConfigError, dump, load
from agent.testing import AgentProcess, run_agent
from tests.integration.dns_server import (
    dnsmasq,
    free_port,
    private_resolver,
    require_private_mounts,
    responder,
    silent_udp,
)

A, NS, CNAME, MX, TXT, AAAA, SRV = (RECORD_TYPES[t] for t in ("A", "NS", "CNAME", "MX", "TXT", "AAAA", "SRV"))


# -- building messages by hand -----------------------------------------------------------------------


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


# -- the wire format ---------------------------------------------------------------------------------


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


def test_every_truncation_of_an_answer_is_a_check_failure() -> None:
    data, _ = compressed_answer()
    for end in range(len(data)):
        with pytest.raises(MalformedMessage):
            parse_message(data[:end])
    assert issubclass(MalformedMessage, CheckFailure)


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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_fail_as_a_check_failure(data: bytes) -> None:
    with contextlib.suppress(CheckFailure):
        parse_message(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=4))
def test_a_mutated_answer_parses_or_fails_as_a_check_failure(changes: list[tuple[int, int]]) -> None:
    data = bytearray(compressed_answer()[0])
    for position, value in changes:
        data[position % len(data)] = value
    with contextlib.suppress(CheckFailure):
        parse_message(bytes(data))


def test_the_first_nameserver_of_resolv_conf_is_used_on_port_53() -> None:
    text = "# generated\nsearch ns.svc.cluster.local svc.cluster.local\n; nameserver 10.0.0.1\nnameserver fd00::a # v6\n" \
           "nameserver 10.96.0.10\noptions ndots:5\n"
    assert first_nameserver(text) == ("fd00::a", 53)
    assert first_nameserver("search x\n") is None


# -- the client against scripted servers, in this process --------------------------------------------


async def run_check(**params: Any) -> str:
    check = DnsCheck(Params(**params), timeout=1.0)
    try:
        return await asyncio.wait_for(check.run(), 10)
    finally:
        await check.close()


async def test_stray_replies_are_ignored_and_rcodes_become_reasons() -> None:
    def reply(query: bytes) -> list[bytes]:
        name = query[12:-4]
        if name == wire("servfail.test"):
            return [reply_to(query, rcode=2)]
        if name == wire("formerr.test"):  # an error without the question, as some servers send
            (qid,) = struct.unpack_from("!H", query)
            return [header(qid, 0x8181, 0, 0)]
        if name == wire("bad.test"):
            return [reply_to(query, answers=[record(pointer(12), A, b"\x01")])]
        stray = [reply_to(query, query_id=struct.unpack_from("!H", query)[0] ^ 1, answers=[record(pointer(12), A, b"\x01\x01\x01\x01")]),
                 reply_to(encode_query(struct.unpack_from("!H", query)[0], "other.test", A),
                          answers=[record(pointer(12), A, b"\x02\x02\x02\x02")]),
                 query]  # a query echoed back: QR is not set
        return [*stray, reply_to(query, answers=[record(pointer(12), A, b"\x7f\x00\x00\x09")])]

    with responder(reply) as server:
        at = ("127.0.0.1", server.port)
        assert await run_check(name="ok.test", nameserver=at) == "ok.test A 127.0.0.9"
        with pytest.raises(CheckFailure, match=rf"^SERVFAIL: 127.0.0.1:{server.port} could not resolve servfail.test$"):
            await run_check(name="servfail.test", nameserver=at)
        with pytest.raises(CheckFailure, match=rf"^FORMERR from 127.0.0.1:{server.port} for formerr.test A$"):
            await run_check(name="formerr.test", nameserver=at)
        with pytest.raises(CheckFailure, match=rf"^malformed answer from 127.0.0.1:{server.port}: .*A data of answer 1 is 1 bytes"):
            await run_check(name="bad.test", nameserver=at)


async def test_a_lost_query_is_sent_again_within_the_timeout() -> None:
    def reply(query: bytes) -> list[bytes]:
        return [] if len(server.queries) == 1 else [reply_to(query, answers=[record(pointer(12), A, b"\x7f\x00\x00\x01")])]

    with responder(reply) as server:
        assert await run_check(name="lost.test", nameserver=("127.0.0.1", server.port)) == "lost.test A 127.0.0.1"
        assert len(server.queries) == 2 and server.queries[0] == server.queries[1]


async def test_a_hung_system_lookup_is_awaited_again_rather_than_started_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    calls: list[str] = []

    async def getaddrinfo(host: str, port: Any, **kwargs: Any) -> list[Any]:
        calls.append(host)
        await release.wait()
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.3", 0))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    check = DnsCheck(Params(name="slow.test"), timeout=1.0)
    for _ in range(3):  # three runs time out; the lookup goes on
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(check.run(), 0.05)
    release.set()
    assert await check.run() == "slow.test A 127.0.0.3"
    assert calls == ["slow.test"]
    await check.close()


# -- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", ["name: db.internal", "name: localhost", "{name: x.test, nameserver: '127.0.0.1:53'}"])
def test_a_dns_check_under_liveness_is_refused_unless_allowed(params: str) -> None:
    body = params.strip("{}")
    with pytest.raises(ConfigError) as info:
        load(f"checks: {{d: {{type: dns, {body}, probes: [liveness]}}}}", {})
    assert [p for p, _ in info.value.problems] == ["checks.d.probes"]
    assert "a dns check of a dependency under liveness" in info.value.problems[0][1]
    config = load(f"checks: {{d: {{type: dns, {body}, probes: [liveness], allow_in_liveness: true}}}}", {})
    assert config.checks[0].probes == ("liveness",)


def test_the_dns_keys_are_parsed_and_dumped() -> None:
    config = load(textwrap.dedent("""
        checks:
          a: {type: dns, name: db.internal}
          b: {type: dns, name: _pg._tcp.db.internal, record_type: srv, nameserver: '10.96.0.10', require_records: false}
          c: {type: dns, name: x.test, record_type: AAAA, nameserver: 'fd00::10'}
          d: {type: dns, name: x.test, nameserver: '[fd00::10]:5353'}
    """), {})
    params = [c.params for c in config.checks]
    assert params[0] == Params("db.internal", "A", None, True)
    assert params[1] == Params("_pg._tcp.db.internal", "SRV", ("10.96.0.10", 53), False)
    assert params[2].nameserver == ("fd00::10", 53) and params[3].nameserver == ("fd00::10", 5353)
    assert dump(config)["checks"]["b"] == {
        "type": "dns", "probes": ["readiness"], "interval": "10s", "timeout": "1s", "initial_delay": "0s",
        "failure_threshold": 3, "success_threshold": 1, "allow_in_liveness": False,
        "name": "_pg._tcp.db.internal", "record_type": "SRV", "nameserver": "10.96.0.10:53", "require_records": False,
    }


@pytest.mark.parametrize(("body", "problem"), [
    ("{type: dns}", "checks.d.name: required key is missing"),
    ("{type: dns, name: x.test, record_type: PTR}", "checks.d.record_type: expected one of A, AAAA, CNAME, MX, NS, SRV, TXT"),
    ("{type: dns, name: 'a..test'}", "checks.d: name: 'a..test' has an empty label"),
    ("{type: dns, name: x.test, nameserver: '10.0.0.1:99999'}", "checks.d.nameserver: port must be a number"),
])
def test_bad_dns_keys_are_reported(body: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(f"checks: {{d: {body}}}", {})
    found = [f"{p}: {m}" for p, m in info.value.problems]
    assert len(found) == 1 and found[0].startswith(problem), found


# -- the real agent ----------------------------------------------------------------------------------


def results(agent: AgentProcess, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each check's last result, once every one has run (and failed or passed twice, so it is settled)."""
    def settled() -> dict[str, dict[str, Any]] | None:
        checks = agent.status()["checks"]
        done = all(checks[n]["consecutive_successes"] + checks[n]["consecutive_failures"] >= 2 for n in names)
        return {n: checks[n]["last_result"] for n in names} if done else None
    found: dict[str, dict[str, Any]] = agent.wait_for(settled, timeout=30)
    return found


def verbose_lines(agent: AgentProcess) -> set[str]:
    return set(agent.get("/readyz?verbose")[1].splitlines())


def test_localhost_resolves_through_the_system_resolver() -> None:
    with run_agent("checks: {d: {type: dns, name: localhost, interval: 100ms, failure_threshold: 1}}") as agent:
        agent.wait_status("/readyz", 200)
        assert results(agent, ["d"])["d"]["message"] == "localhost A 127.0.0.1"


NS_DATA = "".join(f"{len(label):02x}{label.encode().hex()}" for label in ("ns1", "ok", "test")) + "00"
BIG_TXT = ",".join(letter * 200 for letter in "abcd")  # over 512 bytes: the UDP answer is truncated, then TCP
NAMESERVER_RECORDS = (
    "--local=/test/",  # names under .test are answered from here only, unknown ones NXDOMAIN; others REFUSED
    "--host-record=ok.test,127.0.0.5", "--host-record=both.test,127.0.0.6,::6",
    "--txt-record=txt.test,hello world,two", "--srv-host=_http._tcp.srv.test,ok.test,8080,1,5",
    "--mx-host=mx.test,ok.test,10", "--cname=alias.test,both.test", f"--dns-rr=ns.test,2,{NS_DATA}",
    f"--txt-record=big.test,{BIG_TXT}",
)


def test_dns_checks_against_a_real_nameserver() -> None:
    with dnsmasq(*NAMESERVER_RECORDS) as dns, silent_udp() as silent:
        closed = free_port()
        ns = f"nameserver: '{dns.address}', interval: 200ms, failure_threshold: 1"
        checks = {
            "a": f"name: ok.test, {ns}",
            "aaaa": f"name: both.test, record_type: AAAA, {ns}",
            "no-aaaa": f"name: ok.test, record_type: AAAA, {ns}",
            "no-aaaa-allowed": f"name: ok.test, record_type: AAAA, require_records: false, {ns}",
            "txt": f"name: txt.test, record_type: TXT, {ns}",
            "srv": f"name: _http._tcp.srv.test, record_type: SRV, {ns}",
            "mx": f"name: mx.test, record_type: MX, {ns}",
            "ns": f"name: ns.test, record_type: NS, {ns}",
            "cname": f"name: alias.test, {ns}",
            "big": f"name: big.test, record_type: TXT, {ns}",
            "nx": f"name: nope.test, {ns}",
            "nx-allowed": f"name: nope.test, require_records: false, {ns}",
            "refused": f"name: other.example, {ns}",
            "silent": f"name: ok.test, nameserver: '127.0.0.1:{silent}', timeout: 300ms, interval: 200ms, failure_threshold: 1",
            "closed": f"name: ok.test, nameserver: '127.0.0.1:{closed}', interval: 200ms, failure_threshold: 1",
        }
        config = "checks:\n" + "".join(f"  {name}: {{type: dns, {body}}}\n" for name, body in checks.items())
        with run_agent(config) as agent:
            found = results(agent, list(checks))
            agent.wait_status("/readyz", 503)
            lines = verbose_lines(agent)
    messages = {name: (result["result"], result["message"]) for name, result in found.items()}
    assert messages == {
        "a": ("success", "ok.test A 127.0.0.5"),
        "aaaa": ("success", "both.test AAAA ::6"),
        "no-aaaa": ("failure", "no AAAA records for ok.test"),
        "no-aaaa-allowed": ("success", "no AAAA records for ok.test (require_records is false)"),
        "txt": ("success", 'txt.test TXT "hello world" "two"'),
        "srv": ("success", "_http._tcp.srv.test SRV 1 5 8080 ok.test"),
        "mx": ("success", "mx.test MX 10 ok.test"),
        "ns": ("success", "ns.test NS ns1.ok.test"),
        "cname": ("success", "alias.test A 127.0.0.6 (via CNAME both.test)"),
        "big": ("success", 'big.test TXT "' + "a" * 56 + "..."),
        "nx": ("failure", f"NXDOMAIN: nope.test does not exist (answer from {dns.address})"),
        "nx-allowed": ("failure", f"NXDOMAIN: nope.test does not exist (answer from {dns.address})"),
        "refused": ("failure", f"REFUSED: {dns.address} refused to answer for other.example"),
        "silent": ("timeout", "timed out after 300ms"),
        "closed": ("failure", f"no DNS server at 127.0.0.1:{closed} (connection refused)"),
    }
    assert {"[+]a ok", "[-]no-aaaa failed: no AAAA records for ok.test", "[+]no-aaaa-allowed ok",
            f"[-]nx failed: NXDOMAIN: nope.test does not exist (answer from {dns.address})",
            "[-]silent failed: timed out after 300ms", "readyz check failed"} <= lines


def test_a_name_that_stops_resolving_fails_readiness_with_the_reason() -> None:
    with dnsmasq("--local=/test/", hosts="127.0.0.7 flip.test\n") as dns:
        config = f"checks: {{d: {{type: dns, name: flip.test, nameserver: '{dns.address}', interval: 100ms, failure_threshold: 1}}}}"
        with run_agent(config) as agent:
            agent.wait_status("/readyz", 200)
            with open(dns.hosts_file, "w", encoding="utf-8") as handle:
                handle.write("")
            dns.reload()
            agent.wait_status("/readyz?verbose", 503, f"[-]d failed: NXDOMAIN: flip.test does not exist (answer from {dns.address})")
            with open(dns.hosts_file, "w", encoding="utf-8") as handle:
                handle.write("127.0.0.7 flip.test\n")
            dns.reload()
            agent.wait_status("/readyz", 200)
            assert [r["state"] for r in agent.log_records() if r.get("check") == "d"] == ["passing", "failing", "passing"]


def test_the_system_resolver_reads_hosts_and_asks_the_resolv_conf_nameserver() -> None:
    require_private_mounts()
    records = ("--address=/#/", "--host-record=dnsonly.test,127.0.0.8", "--txt-record=txt.test,from resolv.conf")
    hosts = "127.0.0.1 localhost\n127.0.0.9 hosts-only.test\n"
    with dnsmasq(*records, host=None, port=53) as dns, private_resolver(hosts, dns.host) as prefix:
        checks = {
            "hosts": "name: hosts-only.test",
            "dns": "name: dnsonly.test",
            "nx": "name: nope.test",
            "no-aaaa": "name: dnsonly.test, record_type: AAAA",
            "txt": "name: txt.test, record_type: TXT",
        }
        config = "checks:\n" + "".join(f"  {n}: {{type: dns, {b}, interval: 200ms, timeout: 3s, failure_threshold: 1}}\n"
                                       for n, b in checks.items())
        with run_agent(config, prefix=prefix) as agent:
            found = results(agent, list(checks))
            lines = verbose_lines(agent)
    assert {n: (r["result"], r["message"]) for n, r in found.items()} == {
        "hosts": ("success", "hosts-only.test A 127.0.0.9"),
        "dns": ("success", "dnsonly.test A 127.0.0.8"),
        "nx": ("failure", "NXDOMAIN: nope.test does not resolve"),
        "no-aaaa": ("failure", "no AAAA records for dnsonly.test"),
        "txt": ("success", 'txt.test TXT "from resolv.conf"'),
    }
    assert "[-]nx failed: NXDOMAIN: nope.test does not resolve" in lines

