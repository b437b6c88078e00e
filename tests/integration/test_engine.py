"""The engine in-process, on a real event loop: timeouts, stuck runs, errors, owned tasks."""

from __future__ import annotations

import asyncio
import time

from agent.checks import CheckContext
from agent.config import load
from agent.logs import Scrubber
from agent.process.reaper import Reaper
from agent.runtime.engine import Engine
from agent.runtime.health import Health, Outcome
from agent.runtime.metrics import Metrics
from agent.runtime.tasks import Tasks

CONFIG = """
checks:
  stuck: {type: tcp, address: '127.0.0.1:1', interval: 100ms, timeout: 100ms, failure_threshold: 1}
  steady: {type: tcp, address: '127.0.0.1:1', interval: 100ms, timeout: 100ms, failure_threshold: 1}
  broken: {type: tcp, address: '127.0.0.1:1', interval: 100ms, timeout: 100ms, failure_threshold: 1}
"""


class IgnoresCancellation:
    """A check written badly: it swallows cancellation and keeps waiting."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(self) -> str:
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue
        return "released"

    async def close(self) -> None:
        return None


class Steady:
    async def run(self) -> str:
        return "fine"

    async def close(self) -> None:
        return None


class Raises:
    async def run(self) -> str:
        raise KeyError("password=hunter2")

    async def close(self) -> None:
        return None


def make_engine() -> tuple[Engine, Health]:
    specs = load(CONFIG, {}).checks
    health = Health(specs, time.monotonic)
    metrics = Metrics(health, lambda: None, time.monotonic)
    engine = Engine(health, metrics, CheckContext(None, {}, time.monotonic, Reaper()), Scrubber(["hunter2"]),
                    Tasks(metrics.count_task_failure))
    return engine, health


async def test_a_check_that_ignores_cancellation_blocks_neither_the_others_nor_close() -> None:
    engine, health = make_engine()
    stuck = IgnoresCancellation()
    engine.checks.update(stuck=stuck, steady=Steady(), broken=Raises())
    engine.start()
    try:
        for _ in range(200):
            await asyncio.sleep(0.05)
            if health.states["steady"].successes >= 5 and health.states["stuck"].failures >= 2:
                break
        assert health.states["steady"].successes >= 5
        last = health.states["stuck"].last
        assert last is not None and last.outcome is Outcome.TIMEOUT
        assert "stuck" in engine.stuck
        assert engine.dead_pollers() == []
    finally:
        started = time.monotonic()
        await engine.close()
        assert time.monotonic() - started < 10
        stuck.release.set()
        await asyncio.sleep(0)
    assert all(task.done() for task in engine.pollers.values())


async def test_a_check_that_raises_counts_as_an_error_with_secrets_scrubbed_and_the_engine_goes_on() -> None:
    engine, health = make_engine()
    engine.checks.update(stuck=Steady(), steady=Steady(), broken=Raises())
    engine.start()
    try:
        for _ in range(200):
            await asyncio.sleep(0.05)
            if health.states["broken"].failures >= 3:
                break
        last = health.states["broken"].last
        assert last is not None and last.outcome is Outcome.ERROR
        assert last.message == "KeyError: 'password=<redacted>'"
        assert engine.dead_pollers() == []
        assert engine.metrics.check_runs.labels("broken", "error")._value.get() >= 3
    finally:
        await engine.close()


async def test_close_cancels_and_awaits_every_poller() -> None:
    engine, _ = make_engine()
    engine.checks.update(stuck=Steady(), steady=Steady(), broken=Steady())
    engine.start()
    await asyncio.sleep(0.3)
    await engine.close()
    assert all(task.done() for task in engine.pollers.values())
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []


class BadMessage:
    """A check whose result cannot even be turned into a message: the poller itself dies on it."""

    def __init__(self) -> None:
        self.calls = 0

    async def run(self) -> str:
        self.calls += 1

        class Unprintable:
            def __str__(self) -> str:
                raise RuntimeError("cannot print me")
        return Unprintable()  # type: ignore[return-value]

    async def close(self) -> None:
        return None


async def test_a_poller_that_dies_is_restarted_counted_and_reported() -> None:
    engine, health = make_engine()
    bad = BadMessage()
    engine.checks.update(stuck=Steady(), steady=Steady(), broken=bad)
    engine.start()
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if bad.calls >= 2:
                break
        assert bad.calls >= 2, "the poller was not restarted"
        assert engine.metrics.poller_restarts.labels("broken")._value.get() >= 1
        assert health.states["steady"].successes >= 3
        for _ in range(200):
            if bad.calls >= 3 and "broken" in engine.dead_pollers():
                break
            await asyncio.sleep(0.05)
        assert engine.dead_pollers() == ["broken"]  # three deaths within a minute: the agent is unhealthy
    finally:
        await engine.close()
    assert all(task.done() for task in engine.pollers.values())


async def test_a_reload_keeps_unchanged_checks_and_replaces_changed_ones() -> None:
    engine, health = make_engine()
    engine.checks.update(stuck=Steady(), steady=Steady(), broken=Steady())
    engine.start()
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if health.states["steady"].successes >= 3:
                break
        kept, replaced = health.states["steady"], health.states["stuck"]
        new_specs = load(CONFIG.replace("  broken:", "  renamed:").replace(
            "stuck: {type: tcp, address: '127.0.0.1:1', interval: 100ms", "stuck: {type: tcp, address: '127.0.0.1:2', interval: 100ms"
        ), {}).checks
        steady_poller = engine.pollers["steady"]
        added, removed, changed = await engine.apply(new_specs)
        assert (added, removed, changed) == (["renamed"], ["broken"], ["stuck"])
        assert health.states["steady"] is kept and engine.pollers["steady"] is steady_poller
        # The changed check starts afresh (its new poller may already have run once: the state is new, not emptied).
        assert "broken" not in health.states and health.states["stuck"] is not replaced
        assert health.states["stuck"].spec.params.address == ("127.0.0.1", 2)
        assert sorted(engine.pollers) == ["renamed", "steady", "stuck"]
    finally:
        await engine.close()
