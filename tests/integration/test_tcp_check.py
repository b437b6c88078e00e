"""The tcp check on real loopback sockets: a connection settled when connect_ex returns, and one still in progress."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import psutil
import pytest

from agent.checks import CheckContext, CheckFailure
from agent.checks.tcp_check import Params, TcpCheck
from agent.config import load
from agent.logs import Scrubber
from agent.process.reaper import Reaper
from agent.runtime.engine import Engine
from agent.runtime.health import Health, Outcome
from agent.runtime.metrics import Metrics
from agent.runtime.tasks import Tasks


@contextlib.contextmanager
def listening(backlog: int = 16) -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    try:
        yield sock
    finally:
        sock.close()


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A port whose listener never accepts and whose queue is full: the kernel drops further SYNs, so a connect to
    it stays in progress (it neither succeeds nor fails) for as long as a run may take."""
    with listening(backlog=0) as listener, contextlib.ExitStack() as held:
        port = listener.getsockname()[1]
        for _ in range(4):  # backlog 0 still queues one; a few more make sure the queue is full
            client = held.enter_context(socket.socket())
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
        yield port


async def test_a_connection_that_settles_at_once_passes() -> None:
    with listening() as listener:
        port = listener.getsockname()[1]
        check = TcpCheck(Params(("127.0.0.1", port)))
        assert await check.run() == f"connected to 127.0.0.1:{port}"


async def test_a_refused_connection_fails_with_its_reason() -> None:
    with listening() as listener:
        port = listener.getsockname()[1]
    check = TcpCheck(Params(("127.0.0.1", port)))
    with pytest.raises(CheckFailure, match=f"connection refused by 127.0.0.1:{port}"):
        await check.run()


def connecting_to(port: int) -> int:
    """How many TCP connections of this process to PORT are still in SYN_SENT (connect() under way)."""
    return sum(1 for c in psutil.Process().net_connections("tcp")
               if c.status == psutil.CONN_SYN_SENT and c.raddr and c.raddr[1] == port)


async def test_a_connection_still_in_progress_is_waited_for_on_the_loop() -> None:
    with full_backlog() as port:
        check = TcpCheck(Params(("127.0.0.1", port)))
        held = connecting_to(port)  # the backlog's own extra connects
        run = asyncio.create_task(check.run())
        # The check's SYN is out and unanswered (the backlog is full), and the loop has run other work since:
        # a run that blocked or gave up would be done by now; one suspended on the socket is not.
        async with asyncio.timeout(10):  # a bound for a SYN that never shows: fail here, not at the test's timeout
            while connecting_to(port) <= held and not run.done():
                await asyncio.sleep(0.01)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not run.done()  # suspended on the socket, not finished nor failed
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run


async def test_a_run_still_connecting_at_its_deadline_is_recorded_as_a_timeout() -> None:
    with full_backlog() as port:
        config = f"checks: {{slow: {{type: tcp, address: '127.0.0.1:{port}', interval: 10s, timeout: 100ms}}}}\n"
        specs = load(config, {}).checks
        health = Health(specs, time.monotonic)
        metrics = Metrics(health, lambda: None, time.monotonic)
        engine = Engine(health, metrics, CheckContext(None, {}, time.monotonic, Reaper()), Scrubber(),
                        Tasks(metrics.count_task_failure))
        result = await engine.run_once(specs[0], engine.checks["slow"])
        assert result.outcome is Outcome.TIMEOUT
        assert result.message == "timed out after 100ms"
        assert engine.stuck == {}
        await engine.close()
