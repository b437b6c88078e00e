"""Benchmark of the shutdown ordering's precision (issue 3), and the e2e rollout numbers.

Run as `.venv/bin/python bench/bench_shutdown.py` from the repository root (about a minute with the defaults);
it prints a markdown table (progress goes to stderr). What it measures:

1. over `--runs` runs (default 20), each with a fresh agent (`python -m agent run`) watching a fresh stand-in app
   (tests/apps/app.py, which records the SIGTERM it gets with CLOCK_MONOTONIC, the clock every process shares):
   a. the time from the trigger (SIGTERM sent to the agent) to the first `503` on `/readyz`, polled back to back
      over one keep-alive connection;
   b. the error of the moment the app received its SIGTERM against trigger + `drain_delay`;
2. the e2e pod deletion of tests/e2e/pod.py (kubelet-like probes, a Service with endpoint lag, client load), run
   `--e2e-runs` times with the agent's ordering and as many times with SIGTERM straight to the app: the client
   requests that failed.

Every process it starts is stopped by its pid; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.e2e.pod, when run as bench/bench_shutdown.py

from agent.testing import AgentProcess, run_agent  # noqa: E402
from tests.e2e.pod import Outcome, Timing, run_scenario  # noqa: E402

STAND_IN_APP = ROOT / "tests" / "apps" / "app.py"
HOST = "127.0.0.1"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    to_503: float  # seconds from the trigger to the first 503 answer
    polls: int  # /readyz requests sent after the trigger, up to that answer
    signal_error: float  # app SIGTERM - (trigger + drain_delay), seconds
    agent_exit: float  # seconds from the trigger to the agent's exit


def app_events(path: Path) -> dict[str, float]:
    events: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, at = line.partition(" ")
            events.setdefault(name, float(at))
    return events


def wait_app_seen(agent: AgentProcess, pid: int) -> None:
    agent.wait_for(lambda: (agent.status().get("app") or {}).get("pid") == pid)


def one_run(folder: Path, index: int, drain_delay: float) -> Run:
    marker = f"bench-shutdown-app-{os.getpid()}-{index}-{os.urandom(3).hex()}"
    app_log = folder / f"{marker}.log"
    app = subprocess.Popen([sys.executable, str(STAND_IN_APP), "--log", str(app_log), marker])
    try:
        config = (f"app: {{match: {{cmdline: '{marker}'}}}}\n"
                  "checks: {proc: {type: process, interval: 100ms, probes: [liveness, readiness]}}\n"
                  f"shutdown: {{drain_delay: {round(drain_delay * 1000)}ms, stop_timeout: 5s}}\n")
        with run_agent(config) as agent:
            wait_app_seen(agent, app.pid)
            agent.wait_status("/readyz", 200)
            conn = http.client.HTTPConnection(HOST, agent.port, timeout=5)
            try:
                for _ in range(20):  # warm the keep-alive connection up
                    conn.request("GET", "/readyz")
                    response = conn.getresponse()
                    response.read()
                    assert response.status == 200, response.status
                triggered = time.monotonic()
                agent.signal(signal.SIGTERM)
                polls = 0
                while True:
                    conn.request("GET", "/readyz")
                    response = conn.getresponse()
                    response.read()
                    polls += 1
                    if response.status == 503:
                        not_ready = time.monotonic()
                        break
                    if time.monotonic() - triggered > 10:
                        raise RuntimeError("/readyz did not answer 503 within 10 s of SIGTERM")
            finally:
                conn.close()
            code = agent.wait_exit(drain_delay + 15)
            exited = time.monotonic()
            if code != 0:
                raise RuntimeError(f"the agent exited with {code}:\n" + "\n".join(agent.logs()[-20:]))
        app.wait(10)
        signalled = app_events(app_log).get("SIGTERM")
        if signalled is None:
            raise RuntimeError("the app never received SIGTERM")
        return Run(not_ready - triggered, polls, signalled - (triggered + drain_delay), exited - triggered)
    finally:
        if app.poll() is None:
            app.kill()
        app.wait()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def worst(values: list[float]) -> float:
    return max(values, key=abs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--drain-delay", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument("--e2e-runs", type=int, default=3, help="e2e deletions per scenario (default 3)")
    args = parser.parse_args()

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-shutdown-") as tmp:
        folder = Path(tmp)
        for index in range(args.runs):
            run = one_run(folder, index, args.drain_delay)
            runs.append(run)
            log(f"run {index + 1}/{args.runs}: 503 after {ms(run.to_503)} ms ({run.polls} polls), "
                f"app SIGTERM error {ms(run.signal_error)} ms, agent exit after {ms(run.agent_exit)} ms")
        outcomes: dict[str, list[Outcome]] = {"agent": [], "direct": []}
        for index in range(args.e2e_runs):
            for with_agent in (True, False):
                scenario_dir = folder / f"e2e-{index}-{int(with_agent)}"
                scenario_dir.mkdir()
                outcome = run_scenario(scenario_dir, with_agent=with_agent)
                outcomes[outcome.scenario].append(outcome)
                log(f"e2e {index + 1}/{args.e2e_runs}: {outcome.summary()}")

    to_503 = [r.to_503 for r in runs]
    errors = [r.signal_error for r in runs]
    exits = [r.agent_exit for r in runs]
    timing = Timing()
    print(f"Shutdown ordering, {args.runs} runs, drain_delay {args.drain_delay:g} s "
          f"(Python {platform.python_version()}, {os.cpu_count()} cores)\n")
    print("| measure | median | worst | target |")
    print("| --- | ---: | ---: | --- |")
    print(f"| trigger (SIGTERM to the agent) → first 503 on `/readyz` | {ms(statistics.median(to_503))} ms "
          f"| {ms(max(to_503))} ms | well under the readiness period |")
    print(f"| app's SIGTERM - (trigger + drain_delay) | {ms(statistics.median(errors))} ms | {ms(worst(errors))} ms "
          "| ≥ 0, small against drain_delay |")
    print(f"| trigger → agent exit (app exits at once on SIGTERM) | {ms(statistics.median(exits))} ms "
          f"| {ms(max(exits))} ms | drain_delay + the app's exit |")
    print()
    print(f"E2E pod deletion ({args.e2e_runs} runs per scenario; readiness period {timing.readiness_period:g} s x "
          f"failureThreshold {timing.failure_threshold}, endpoint lag {timing.endpoint_lag:g} s, drain_delay "
          f"{timing.drain_delay:g} s, {timing.clients} clients, a new connection per request)\n")
    print("| scenario | failed requests per run | failed / sent while routed (total) | readiness failed after "
          "(median) | Service dropped the pod after (median) | app SIGTERM after (median) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    names = {"agent": "with the agent (SIGTERM + preStop `/prestop` at t=0)", "direct": "SIGTERM straight to the app at t=0"}
    for scenario, rows in outcomes.items():
        if not rows:
            continue
        failed = sum(o.failed for o in rows)
        sent = failed + sum(o.succeeded for o in rows)

        def median_after(values: list[float | None]) -> str:
            known = [v for v in values if v is not None]
            return f"{statistics.median(known):.3f} s" if known else "-"

        print(f"| {names[scenario]} | {', '.join(str(o.failed) for o in rows)} | {failed} / {sent} "
              f"| {median_after([o.at(o.first_not_ready) for o in rows])} "
              f"| {median_after([o.at(o.endpoint_removed) for o in rows])} "
              f"| {median_after([o.at(o.app_sigterm) for o in rows])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
