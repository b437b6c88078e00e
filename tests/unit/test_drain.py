"""drain_connections: the count of established connections on a port, and a drain that ends by its timeout."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from agent.config import DrainConnections, ShutdownConfig
from agent.kube.drain import EndedBy
from agent.runtime.health import Health
from agent.runtime.shutdown import Shutdown, established_connections
from agent.runtime.tasks import Tasks
from agent.testing import FakeClock


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET)
    server.bind(("::" if socket.has_ipv6 else "0.0.0.0", 0))
    server.listen(1024)
    yield server
    server.close()


def connect(port: int, count: int, host: str = "127.0.0.1") -> list[socket.socket]:
    return [socket.create_connection((host, port), timeout=5) for _ in range(count)]


def test_only_established_connections_on_the_port_count(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(16)
    assert established_connections(port) == 0  # a listening socket is not a connection
    clients = connect(port, 3) + connect(port, 2, host="::1")
    accepted = [listener.accept()[0] for _ in clients]
    unrelated = connect(other.getsockname()[1], 2)
    try:
        # The app's side of each connection has the local port; the clients' sides do not.
        assert established_connections(port) == 5
        for sock in accepted[:3]:
            sock.close()
        for sock in clients[:3]:
            sock.close()
        assert established_connections(port) == 2
    finally:
        for sock in clients + accepted + unrelated:
            sock.close()
        other.close()


def test_many_idle_connections_are_counted(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    clients = connect(port, 400)
    accepted = [listener.accept()[0] for _ in clients]
    try:
        assert established_connections(port) == 400
    finally:
        for sock in clients + accepted:
            sock.close()


async def test_the_drain_never_counts_past_its_timeout() -> None:
    clock = FakeClock()
    counted_at: list[float] = []

    def slow_count(port: int) -> int:
        counted_at.append(clock())
        clock.advance(0.4)  # each count takes 0.4 s, as psutil's did among many TIME_WAIT sockets
        return 7

    config = ShutdownConfig(drain_delay=0.0, relay_signal=False, drain_connections=DrainConnections(8080, 1.0))
    shutdown = Shutdown(Health([], clock), config, None, connections=slow_count, clock=clock, tasks=Tasks())
    shutdown.trigger("test")
    await shutdown.stopped.wait()
    assert counted_at and all(at < 1000.0 + 1.0 for at in counted_at)
    assert len(counted_at) == 3 and shutdown.report.outcome == "not_relayed"


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the test's end: lets a count left hanging return, so that its thread ends."""
    event = threading.Event()
    yield event
    event.set()


async def drain_until_a_count_hangs(finished: int, timeout: float, release: threading.Event) -> tuple[Shutdown, list[int]]:
    """A drain of port 8080 whose first `finished` counts find 500 connections and whose next one does not come
    back before the drain's `timeout`; the shutdown once over, and the ports counted."""
    calls: list[int] = []

    def count(port: int) -> int:
        calls.append(port)
        if len(calls) > finished:
            release.wait(60)
        return 500

    config = ShutdownConfig(drain_delay=0.0, relay_signal=False, drain_connections=DrainConnections(8080, timeout))
    shutdown = Shutdown(Health([], time.monotonic), config, None, connections=count, tasks=Tasks())
    shutdown.trigger("test")
    await asyncio.wait_for(shutdown.stopped.wait(), 30)  # a bound for a hang only: the drain takes `timeout`
    return shutdown, calls


async def test_a_count_that_hangs_past_the_deadline_is_not_waited_for_nor_started_again(release: threading.Event) -> None:
    shutdown, calls = await drain_until_a_count_hangs(0, 0.3, release)
    assert shutdown.report.outcome == "not_relayed" and calls == [8080]


async def test_the_last_finished_count_is_reported_when_a_later_one_is_cut_off_by_the_deadline(
        caplog: pytest.LogCaptureFixture, release: threading.Event) -> None:
    # 2 s: room for the first count's thread on a loaded machine.
    with caplog.at_level("WARNING", logger="agent.shutdown"):
        _, calls = await drain_until_a_count_hangs(1, 2.0, release)
    assert len(calls) == 2
    assert "500 connections on port 8080 still open after 2s; going on" in caplog.messages


async def test_a_drain_whose_connections_could_never_be_counted_says_so(caplog: pytest.LogCaptureFixture,
                                                                       release: threading.Event) -> None:
    with caplog.at_level("WARNING", logger="agent.shutdown"):
        await drain_until_a_count_hangs(0, 0.3, release)
    assert "the connections on port 8080 could not be counted within 300ms; going on" in caplog.messages


async def test_without_endpoints_the_drain_is_the_timer_and_is_observed_so() -> None:
    drains: list[tuple[EndedBy, float]] = []
    config = ShutdownConfig(drain_delay=0.2, relay_signal=False)
    shutdown = Shutdown(Health([], time.monotonic), config, None, on_drain=lambda by, s: drains.append((by, s)),
                        tasks=Tasks())
    shutdown.trigger("test")
    await asyncio.wait_for(shutdown.stopped.wait(), 25)
    assert [by for by, _ in drains] == [EndedBy.TIMER] and drains[0][1] >= 0.2
