"""Detection latency of dependency checks, and the agent's memory with and without each client library.

Run: .venv/bin/python bench/bench_dependencies.py [--rounds N]
Kills (and pauses) a throwaway Redis and PostgreSQL under a running agent and measures, by polling /readyz
every 10 ms, the time to 503 and back to 200 against the bound interval x threshold + timeout. Liveness is
polled through every outage and must never fail.
"""

from __future__ import annotations

import argparse
import pathlib
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable

import psutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from agent.testing import AgentProcess, http_request, run_agent
from tests.servers import postgres_cluster, redis_server

INTERVAL, TIMEOUT, FAILURES, SUCCESSES = 1.0, 0.5, 3, 1


def config(check: str) -> str:
    return (f"checks:\n  dep: {{{check}, interval: {INTERVAL}s, timeout: {TIMEOUT}s, failure_threshold: {FAILURES},"
            f" success_threshold: {SUCCESSES}}}\n")


class LivenessWatch:
    """Polls /livez in the background, counting any answer that is not 200."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent, self.failures, self.polls = agent, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            code, _ = http_request(self.agent.url + "/livez", timeout=2)
            self.polls += 1
            self.failures += code != 200
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def until(agent: AgentProcess, code: int, limit: float = 30.0) -> float:
    """Seconds until /readyz answers `code` (polled every 10 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if http_request(agent.url + "/readyz", timeout=2)[0] == code:
            return time.monotonic() - start
        time.sleep(0.01)
    raise RuntimeError(f"/readyz did not answer {code} within {limit}s")


def measure(name: str, check: str, fail: Callable[[], None], recover: Callable[[], None], rounds: int) -> dict[str, object]:
    down, up = [], []
    with run_agent(config(check)) as agent:
        until(agent, 200)
        watch = LivenessWatch(agent)
        for _ in range(rounds):
            time.sleep(INTERVAL * 1.5)  # a random phase against the check's schedule
            fail()
            down.append(until(agent, 503))
            recover()
            up.append(until(agent, 200))
        watch.stop()
    return {"case": name, "down": down, "up": up, "live_failures": watch.failures, "live_polls": watch.polls}


def rss_of(check: str | None) -> float:
    """RSS of an agent running `check` (its client loaded: the check has run at least once), after 3 s."""
    with run_agent(config(check) if check else None) as agent:
        if check:
            agent.wait_for(lambda: agent.status()["checks"]["dep"]["last_result"], timeout=30)
        time.sleep(3)
        return psutil.Process(agent.proc.pid).memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    results = []
    with redis_server() as server:
        check = f"type: redis, url: 'redis://127.0.0.1:{server.port}'"
        results.append(measure("redis killed", check, server.kill, server.start, rounds))
        results.append(measure("redis paused (SIGSTOP)", check, server.pause, server.resume, rounds))
        redis_check = check
        rss = {"no checks": rss_of(None), "redis": rss_of(redis_check)}
    with postgres_cluster() as pg:
        check = f"type: postgres, dsn: 'postgres://checker:right-pass@127.0.0.1:{pg.port}/postgres'"
        results.append(measure("postgres stopped", check, pg.stop_immediately, pg.start, rounds))

        def pause() -> None:
            for p in pg.processes():
                p.send_signal(signal.SIGSTOP)

        def resume() -> None:
            for p in pg.processes():
                p.send_signal(signal.SIGCONT)
        results.append(measure("postgres paused (SIGSTOP)", check, pause, resume, rounds))
        rss["postgres"] = rss_of(check)
    try:
        import grpc  # noqa: F401

        rss["grpc"] = rss_of("type: grpc, address: '127.0.0.1:1'")
    except ImportError:
        pass
    down_bound = INTERVAL * FAILURES + TIMEOUT
    up_bound = INTERVAL * SUCCESSES + TIMEOUT
    print(f"interval {INTERVAL:g}s, timeout {TIMEOUT:g}s, failure_threshold {FAILURES}, success_threshold {SUCCESSES}; "
          f"{rounds} rounds each\n")
    print("| case | to 503: median | worst | bound | to 200: median | worst | bound | liveness non-200 / polls |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        down, up = r["down"], r["up"]
        assert isinstance(down, list) and isinstance(up, list)
        print(f"| {r['case']} | {statistics.median(down):.2f}s | {max(down):.2f}s | {down_bound:g}s | "
              f"{statistics.median(up):.2f}s | {max(up):.2f}s | {up_bound:g}s | {r['live_failures']} / {r['live_polls']} |")
    print("\n| agent configured with | RSS |\n| --- | --- |")
    for name, value in rss.items():
        print(f"| {name} | {value:.1f} MiB |")


if __name__ == "__main__":
    main()
