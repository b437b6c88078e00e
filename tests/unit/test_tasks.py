"""The owner of background tasks: a failure is logged with the task's name and counted, never lost; close cancels
and awaits every task. (A failing shutdown sequence, with a real app: tests/integration/test_task_faults.py.)"""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.runtime.tasks import TaskKind, Tasks


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
