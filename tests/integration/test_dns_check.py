"""The dns check: its client against scripted servers, and the real agent against real DNS servers on loopback.

The wire format has its own tests, fuzzing included: tests/unit/test_dns_wire.py.

No query leaves this machine: the nameserver tests ask dnsmasq (no upstream) or a scripted UDP responder on
127.0.0.1, and the system-resolver tests resolve `localhost`, or run the agent with its own /etc/hosts and
/etc/resolv.conf (a private mount namespace) pointing at a dnsmasq on a loopback address.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import textwrap
import threading
from typing import Any

import pytest

from agent.checks import CheckFailure
from agent.checks.dns_check import DnsCheck, Params, first_nameserver
from agent.checks.dns_wire import encode_query
from agent.config import ConfigError, dump, load
from agent.testing import AgentProcess, run_agent
from tests.dns_messages import A, header, pointer, record, reply_to, wire
from tests.integration.dns_server import (
    dnsmasq,
    private_resolver,
    require_private_mounts,
    responder,
    silent_udp,
)
from tests.servers import free_port


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
    release = threading.Event()
    calls: list[str] = []

    def getaddrinfo(host: str, port: Any, *args: Any) -> list[Any]:  # the resolver, hung in its thread until released
        calls.append(host)
        release.wait(30)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.3", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
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
            # The log is read from a pipe by a thread: the line can trail the answer that /readyz gave.
            agent.wait_for(lambda: [r["state"] for r in agent.log_records() if r.get("check") == "d"] == ["passing", "failing", "passing"])


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

