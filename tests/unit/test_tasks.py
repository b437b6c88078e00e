"""The owner of background tasks: a failure is logged with the task's name and counted, never lost; close cancels
and awaits every task; and a shutdown sequence that fails still stops its app, by SIGKILL at stop_timeout."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from agent.config import ShutdownConfig, StopScope
from agent.process.tree import Member
from agent.runtime.health import Health
from agent.runtime.shutdown import Shutdown, ShutdownOutcome
from agent.runtime.tasks import TaskKind, Tasks
from agent.testing import FakeClock


async def test_a_task_that_raises_is_logged_with_its_name_counted_and_seen_by_its_awaiter(
        caplog: pytest.LogCaptureFixture) -> None:
    counted: list[TaskKind] = []
    tasks = Tasks(counted.append)

    async def broken() -> None:
        raise LookupError("no such thing")

    task = tasks.start(broken(), TaskKind.RELOAD, "reload")
    with caplog.at_level(logging.ERROR, "agent.tasks"), pytest.raises(LookupError):
        await task
    assert counted == [TaskKind.RELOAD] and tasks.failed_kinds == {TaskKind.RELOAD}
    [record] = caplog.records
    assert record.getMessage() == "task reload failed: LookupError: no such thing" and record.exc_info is not None
    assert tasks.running == set()


async def test_close_cancels_and_awaits_every_task_and_takes_no_new_one() -> None:
    tasks = Tasks()
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    for name in ("a", "b"):
        tasks.start(forever(name), TaskKind.POLLER, name)
    await asyncio.sleep(0)
    await tasks.close()
    assert sorted(ended) == ["a", "b"] and tasks.running == set()
    with pytest.raises(RuntimeError, match="no new task after close"):
        tasks.start(forever("c"), TaskKind.POLLER, "c")


class StubbornApp:
    """An app target that ignores the stop signal; looking it up fails (the sequence's internal error)."""

    description = "the test's app"
    ever_seen = True

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def alive(self) -> bool:
        raise RuntimeError("lookup broke")

    def send(self, signum: int, scope: StopScope) -> str:
        self.calls.append(f"send {signal.Signals(signum).name} {scope}")
        return "the test's app"

    def kill(self, scope: StopScope) -> list[Member]:
        self.calls.append(f"kill {scope}")
        return [Member(4242, "app", 1.0)]

    def leftovers(self) -> list[Member]:
        return []

    def remaining(self) -> str | None:
        return None

    async def wait_exit(self, timeout: float) -> bool:
        await asyncio.sleep(timeout)  # it never exits by itself
        return False


async def test_a_failing_sequence_still_signals_the_app_then_kills_it_at_stop_timeout() -> None:
    counted: list[TaskKind] = []
    outcomes: list[ShutdownOutcome] = []
    app = StubbornApp()
    config = ShutdownConfig(drain_delay=0.0, stop_timeout=0.05, stop_scope=StopScope.PROCESS)
    shutdown = Shutdown(Health([], FakeClock()), config, app, on_outcome=outcomes.append, tasks=Tasks(counted.append))
    shutdown.trigger("test")
    await asyncio.wait_for(shutdown.stopped.wait(), 30)
    assert app.calls == ["send SIGTERM process", "kill process"]
    assert outcomes == [ShutdownOutcome.ERROR] and shutdown.report.outcome is ShutdownOutcome.ERROR
    assert shutdown.report.error == "internal error in the shutdown sequence (RuntimeError); see the agent's log"
    assert counted == [TaskKind.SHUTDOWN]
    await shutdown.close()


class FailsAfterTheSignal(StubbornApp):
    """Found and signalled as usual; what fails is the look at what is left once stop_timeout has passed."""

    async def alive(self) -> bool:
        return True

    def remaining(self) -> str | None:
        raise RuntimeError("cannot read the tree")


async def test_a_sequence_that_fails_after_the_stop_signal_does_not_send_it_twice() -> None:
    app = FailsAfterTheSignal()
    config = ShutdownConfig(drain_delay=0.0, stop_timeout=0.05)
    shutdown = Shutdown(Health([], FakeClock()), config, app, tasks=Tasks())
    shutdown.trigger("test")
    await asyncio.wait_for(shutdown.stopped.wait(), 30)
    assert app.calls == ["send SIGTERM group", "kill group"]
    assert shutdown.report.outcome is ShutdownOutcome.ERROR and shutdown.report.signalled_after is not None
    await shutdown.close()
