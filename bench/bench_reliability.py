"""Benchmark of the agent's reliability (issue 6): load held while faults run, restarts, long runs, fuzzed inputs.

Run as `.venv/bin/python bench/bench_reliability.py` from the repository root (about five minutes with the
defaults; `wrk` must be on PATH, Redis and PostgreSQL must run on 127.0.0.1 as the tests expect). It prints
markdown (progress goes to stderr). What it measures, in one run:

1. **load under faults**: `wrk` sends /readyz and /livez alternately at a stated rate (each connection waits
   `--delay-ms` between requests) for `--seconds`, while: `--slow-clients` connections hold half-sent requests
   (reconnecting when the agent drops them), a throwaway redis (a metrics-only check) is killed and restarted,
   the config is reloaded by SIGHUP every 1.5 s (alternating two variants), and an exec check of `sleep 3600`
   times out every run. The probes' checks (process, http, tcp) pass throughout, so every answer must be 200:
   any other is a probe answered wrongly;
2. **restarts**: the agent SIGKILLed and restarted `--restarts` times beside a running app: time from the
   agent's exec to the first /livez 200 and to the first /readyz 200 (both polled back to back), and whether any
   answer was wrong (a /livez that failed, or a /readyz that failed again after it had passed);
3. **long run**: `--runs` check runs of 8 checks at 20 ms (exec, http, tcp, redis, postgres, file, process, dns):
   the agent's open fds, tasks and RSS before and after;
4. **fuzzed inputs**: `--fuzz` inputs per family of tests/reliability/test_config_fuzz.py through
   `agent.config.load`: how many loaded, how many were refused with located problems, how many hit a known bug,
   and how many raised anything else (which must be 0);
5. **faults**: the outcome of every test of tests/reliability (passed, or a known bug pinned by a strict xfail),
   unless `--no-tests`.

Every process it starts is stopped by its pid; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (ROOT, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))  # for tests.* and bench_probes, when run as bench/bench_reliability.py

from bench_probes import Load, parse_wrk  # noqa: E402

from agent.testing import AgentProcess, run_agent  # noqa: E402
from tests.reliability.test_faults import Restart, every_kind_of_check, runs, watch_restart  # noqa: E402
from tests.reliability.test_http_robustness import SlowClients  # noqa: E402
from tests.servers import accepting_port, free_port_below_ephemeral, redis_server  # noqa: E402

STAND_IN_APP = ROOT / "tests" / "apps" / "app.py"
HOST = "127.0.0.1"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- helpers -------------------------------------------------------------------------------------------------

class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_target() -> Iterator[int]:
    server = ThreadingHTTPServer((HOST, 0), _Ok)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def stand_in_app(folder: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    marker = f"bench-reliability-app-{os.getpid()}-{os.urandom(3).hex()}"
    proc = subprocess.Popen([sys.executable, str(STAND_IN_APP), "--log", str(folder / f"{marker}.log"), marker])
    try:
        yield proc, marker
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def config_path(agent: AgentProcess) -> Path:
    args = list(agent.proc.args)  # type: ignore[arg-type]
    return Path(args[args.index("--config") + 1])


def own(agent: AgentProcess) -> dict[str, Any]:
    result: dict[str, Any] = agent.status()["agent"]
    return result


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def sleepers(marker: str) -> int:
    count = 0
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            count += marker in " ".join(proc.info["cmdline"] or [])
    return count


def wait_until(predicate: Callable[[], bool], limit: float, what: str) -> float:
    """Seconds until `predicate()` held; raises after `limit`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > limit:
            raise RuntimeError(f"{what} did not happen within {limit} s")
        time.sleep(0.02)
    return time.monotonic() - started


# --- 1. load under faults ------------------------------------------------------------------------------------

WRK_SCRIPT = """
local paths = {"/readyz", "/livez"}
local n = 0
function delay() return %d end
function request()
  n = n + 1
  return wrk.format("GET", paths[(n %% 2) + 1])
end
"""


@dataclass
class LoadUnderFaults:
    seconds: float
    connections: int
    delay_ms: int
    load: Load
    slow_clients: int
    slow_fds_held: int
    fds_before: int
    fds_after: int
    redis_failing_after: float
    redis_passing_after: float
    reloads_sent: int
    reloads_applied: int
    reload_failures: int
    exec_timeouts: int
    exec_children_left: int
    steady_transitions: dict[str, int]
    poller_restarts: int
    max_lag: float
    events: list[str] = field(default_factory=list)


def load_config(marker: str, web: int, port: int, redis_port: int, sleep_marker: str, variant: int) -> str:
    text = (f"app: {{match: {{cmdline: '{marker}'}}}}\n"
            "checks:\n"
            "  proc: {type: process, interval: 500ms, probes: [liveness, startup]}\n"
            f"  web: {{type: http, url: 'http://{HOST}:{web}/healthz', interval: 500ms, probes: [readiness, startup]}}\n"
            f"  port: {{type: tcp, address: '{HOST}:{port}', interval: 500ms, probes: [readiness]}}\n"
            f"  cache: {{type: redis, url: 'redis://{HOST}:{redis_port}/0', interval: 200ms, timeout: 500ms, "
            "failure_threshold: 2, probes: []}\n"
            f"  hang: {{type: exec, command: [/bin/sh, -c, 'sleep {sleep_marker}'], interval: 500ms, timeout: 300ms, "
            "failure_threshold: 1, probes: []}\n")
    if variant:
        text += "  extra: {type: exec, command: ['true'], interval: 1s, probes: []}\nlog: {level: debug}\n"
    return text


def load_under_faults(seconds: float, connections: int, delay_ms: int, slow: int, folder: Path) -> LoadUnderFaults:
    sleep_marker = f"3600.{os.getpid()}{int(time.time()) % 100000}"
    with redis_server() as redis, http_target() as web, accepting_port() as port, stand_in_app(folder) as (_, marker):
        def variant(n: int) -> str:
            return load_config(marker, web, port, redis.port, sleep_marker, n)

        with run_agent(variant(0)) as agent:
            agent.wait_status("/readyz", 200)
            agent.wait_status("/startupz", 200)
            time.sleep(1.0)
            fds_before = own(agent)["open_fds"]
            script = folder / "probes.lua"
            script.write_text(WRK_SCRIPT % delay_ms)
            command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), agent.url]
            wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            started = time.monotonic()
            events: list[str] = []
            max_lag, max_fds = 0.0, fds_before

            def at(offset: float) -> None:
                nonlocal max_lag, max_fds
                while time.monotonic() - started < offset:
                    state = own(agent)
                    max_lag, max_fds = max(max_lag, state["event_loop_lag_seconds"]), max(max_fds, state["open_fds"])
                    time.sleep(0.1)

            reloads = 0
            stop_reloads = threading.Event()

            def reloader() -> None:
                nonlocal reloads
                while not stop_reloads.wait(1.5):
                    reloads += 1
                    config_path(agent).write_text(variant(reloads % 2))
                    agent.signal(signal.SIGHUP)

            reload_thread = threading.Thread(target=reloader, daemon=True)
            try:
                reload_thread.start()
                at(2.0)
                attack = SlowClients(agent.port, slow, reconnect=True)
                events.append(f"t={time.monotonic() - started:.1f}s: {slow} slow clients connected")
                at(4.0)
                redis.kill()
                killed = time.monotonic()
                events.append(f"t={killed - started:.1f}s: redis killed")
                failing_after = wait_until(lambda: agent.status()["checks"]["cache"]["state"] == "failing", 10, "cache failing")
                at(killed - started + 3.0)
                redis.start()
                restarted = time.monotonic()
                events.append(f"t={restarted - started:.1f}s: redis restarted")
                passing_after = wait_until(lambda: agent.status()["checks"]["cache"]["state"] == "passing", 10, "cache passing")
                at(max(seconds - 3.0, time.monotonic() - started))
                still_open, reconnects = attack.still_open(), attack.reconnects
                attack.close()
                events.append(f"t={time.monotonic() - started:.1f}s: slow clients closed ({still_open} of {slow} connected at "
                              f"that moment; {reconnects} reconnections after the agent dropped unfinished requests at 15 s)")
                out, _ = wrk.communicate(timeout=seconds + 30)
            finally:
                stop_reloads.set()
                reload_thread.join(5)
                if wrk.poll() is None:
                    wrk.kill()
                    wrk.wait()
            load = parse_wrk(out)
            agent.wait_for(lambda: own(agent)["config_reloads"] + own(agent)["config_reload_failures"] >= reloads, 10)
            fds_after = agent.wait_for(lambda: (lambda n: n if n <= fds_before + 3 else None)(own(agent)["open_fds"]), 20)
            checks = agent.status()["checks"]
            hang = agent.get("/metrics")[1]
            timeouts = re.search(r'sidecar_check_runs_total\{check="hang",result="timeout"\} (\S+)', hang)
            result = LoadUnderFaults(
                seconds=seconds, connections=connections, delay_ms=delay_ms, load=load, slow_clients=slow,
                slow_fds_held=max_fds - fds_before, fds_before=fds_before, fds_after=fds_after, redis_failing_after=failing_after,
                redis_passing_after=passing_after, reloads_sent=reloads, reloads_applied=own(agent)["config_reloads"],
                reload_failures=own(agent)["config_reload_failures"],
                exec_timeouts=int(float(timeouts.group(1))) if timeouts else 0, exec_children_left=0,
                steady_transitions={n: checks[n]["transitions"] for n in ("proc", "web", "port")},
                poller_restarts=own(agent)["poller_restarts"], max_lag=max_lag, events=events)
        result.exec_children_left = sleepers(sleep_marker)
        return result


# --- 2. restarts ---------------------------------------------------------------------------------------------

def restarts(count: int, folder: Path) -> list[Restart]:
    out: list[Restart] = []
    with http_target() as web, stand_in_app(folder) as (app, marker):
        config = folder / "restart.yaml"
        config.write_text(f"app: {{match: {{cmdline: '{marker}'}}}}\n"
                          "checks:\n"
                          "  proc: {type: process, interval: 1s, probes: [liveness, readiness, startup]}\n"
                          f"  web: {{type: http, url: 'http://{HOST}:{web}/healthz', interval: 1s, probes: [readiness]}}\n")
        port = free_port_below_ephemeral()  # a probe never meets itself on it (TCP self-connect)
        for index in range(count + 1):  # the first start is not a restart
            proc, restart = watch_restart(config, port, folder / "restart.log")
            try:
                assert AgentProcess(proc, port).status()["app"]["pid"] == app.pid
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            if index:
                out.append(restart)
        assert app.poll() is None
    return out


def wrong_answers(restart: Restart) -> int:
    wrong = sum(1 for _, path, code in restart.answers if path == "/livez" and code != 200)
    ready = [code for _, path, code in restart.answers if path == "/readyz"]
    first = ready.index(200)
    return wrong + sum(1 for code in ready[first:] if code != 200)


# --- 3. long run ---------------------------------------------------------------------------------------------

@dataclass
class LongRun:
    runs: float
    seconds: float
    fds: tuple[list[int], list[int]]
    tasks: tuple[list[int], list[int]]
    rss_mib: tuple[float, float]
    not_success: int
    poller_restarts: int


def sample(agent: AgentProcess) -> tuple[list[int], list[int]]:
    fds, tasks = [], []
    for _ in range(8):
        state = own(agent)
        fds.append(state["open_fds"])
        tasks.append(state["tasks"])
        time.sleep(0.05)
    return fds, tasks


def long_run(total_runs: int, folder: Path) -> LongRun:
    present = folder / "present"
    present.write_text("x")
    with http_target() as web, accepting_port() as port, stand_in_app(folder) as (_, marker):
        config = every_kind_of_check(marker, f"http://{HOST}:{web}", port, present)
        with run_agent(config) as agent:
            agent.wait_status("/readyz", 200)
            agent.wait_for(lambda: min(runs(agent).values()) >= 20)
            fds_before, tasks_before = sample(agent)
            rss_before = rss_mib(agent.proc.pid)
            start, began = sum(runs(agent).values()), time.monotonic()
            last = [0.0]

            def enough() -> bool:
                done = sum(runs(agent).values()) - start
                if done - last[0] >= 5000:
                    last[0] = done
                    log(f"  {done:.0f} runs")
                return done >= total_runs

            agent.wait_for(enough, timeout=total_runs / 50 + 60, interval=0.5)
            took = time.monotonic() - began
            fds_after, tasks_after = sample(agent)
            rss_after = rss_mib(agent.proc.pid)
            done = sum(runs(agent).values()) - start
            bad = sum(float(m.group(1)) for m in re.finditer(
                r'sidecar_check_runs_total\{check="[^"]+",result="(?:failure|timeout|error)"\} (\S+)', agent.get("/metrics")[1]))
            return LongRun(done, took, (fds_before, fds_after), (tasks_before, tasks_after), (rss_before, rss_after),
                           int(bad), own(agent)["poller_restarts"])


# --- 4. fuzzed inputs ----------------------------------------------------------------------------------------

def fuzz(count: int) -> dict[str, collections.Counter[str]]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from agent.config import load
    from agent.fields import ConfigError
    from tests.reliability import test_config_fuzz as f

    families: dict[str, tuple[Any, Callable[[Any], Any], dict[str, str]]] = {
        "YAML trees (known and random keys)": (f.documents(), f.dump_yaml, f.FUZZ_ENV),
        "YAML values of any shape at the top": (f.trees, f.dump_yaml, f.FUZZ_ENV),
        "text (YAML-ish and any unicode)": (st.one_of(f.YAMLISH, st.text(max_size=200)), lambda x: x, f.FUZZ_ENV),
        "bytes": (st.binary(max_size=200), lambda x: x, f.FUZZ_ENV),
        "mutations of examples/design.yaml": (f.mutated(f.DESIGN_TREE), f.dump_yaml, {**f.DESIGN_ENV, **f.FUZZ_ENV}),
        "mutations of a config with every check type": (f.mutated(f.RICH_TREE), f.dump_yaml, {**f.RICH_ENV, **f.FUZZ_ENV}),
    }
    def classifier(strategy: Any, render: Callable[[Any], Any], env: dict[str, str],
                   counts: collections.Counter[str]) -> Callable[[], None]:
        @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(strategy)
        def classify(value: Any) -> None:
            try:
                load(render(value), env)
                counts["loaded"] += 1
            except ConfigError as error:
                unlocated = f.unlocated(error)
                if not unlocated:
                    counts["refused, every problem located"] += 1
                elif all(any(k.search(m) for k in f.KNOWN_UNLOCATED) for _, m in unlocated):
                    counts["refused, a problem unlocated (known bug)"] += 1
                else:
                    counts["refused, a problem unlocated (NEW)"] += 1
            except Exception as exc:  # noqa: BLE001 - counted: the property is that nothing else escapes
                bug = f.known_bug(exc)
                counts[f"known bug: {bug}" if bug else f"NEW: {type(exc).__name__}"] += 1
        return classify

    out: dict[str, collections.Counter[str]] = {}
    for name, (strategy, render, env) in families.items():
        counts: collections.Counter[str] = collections.Counter()
        classify = classifier(strategy, render, env, counts)
        log(f"  fuzzing {name}")
        classify()
        out[name] = counts
    return out


# --- 5. the test suite's outcomes ----------------------------------------------------------------------------

def test_outcomes() -> tuple[list[tuple[str, str, int]], str]:
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/reliability", "-q", "-rA", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    grouped: dict[tuple[str, str], int] = collections.Counter()
    for line in done.stdout.splitlines():
        match = re.match(r"(PASSED|XFAIL|FAILED|XPASS|ERROR|SKIPPED) tests/reliability/(\w+)\.py::(\w+)", line)
        if match:
            grouped[(f"{match.group(2)}::{match.group(3)}", match.group(1))] += 1
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    return [(name, outcome, n) for (name, outcome), n in grouped.items()], summary


# --- the report ----------------------------------------------------------------------------------------------

def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def report(lf: LoadUnderFaults, rs: list[Restart], lr: LongRun, fz: dict[str, collections.Counter[str]],
           tests: tuple[list[tuple[str, str, int]], str] | None) -> str:
    out = ["### Load held while faults ran", "",
           f"`wrk -t2 -c{lf.connections} -d{lf.seconds:g}s --latency` with a Lua script alternating /readyz and /livez, "
           f"each connection waiting {lf.delay_ms} ms between requests (a stated rate of about "
           f"{lf.connections * 1000 / lf.delay_ms:.0f} requests/s at most).", "",
           "| measure | value |", "| --- | ---: |",
           f"| requests answered | {lf.load.requests} |",
           f"| requests/s | {lf.load.rps:.0f} |",
           f"| latency p50 / p99 / max | {lf.load.p50_ms:.2f} / {lf.load.p99_ms:.2f} / {lf.load.max_ms:.2f} ms |",
           f"| answers other than 200 (a probe answered wrongly) | {lf.load.non_2xx} |",
           f"| socket errors | {lf.load.socket_errors} |",
           f"| agent event-loop lag, worst sampled | {ms(lf.max_lag)} |", "",
           "Faults during the load:", ""]
    out += [f"- {event}" for event in lf.events]
    out += [f"- {lf.slow_clients} slow clients (half-sent request lines and headers, one byte every 0.5 s): the agent "
            f"open fds peaked {lf.slow_fds_held} above the baseline (the slow clients, wrk's {lf.connections} connections and "
            f"the checks' own); {lf.fds_before} before, {lf.fds_after} after they left",
            f"- redis killed: its check failed {ms(lf.redis_failing_after)} later (failure_threshold 2 at 200 ms); restarted: "
            f"passing again {ms(lf.redis_passing_after)} later",
            f"- SIGHUP reloads: {lf.reloads_sent} sent, {lf.reloads_applied} applied, {lf.reload_failures} refused; the "
            f"probes' checks never flipped (transitions: {lf.steady_transitions}, 1 = the first pass only)",
            f"- exec `sleep 3600` with a 300 ms timeout: {lf.exec_timeouts} runs timed out and were killed; "
            f"{lf.exec_children_left} children left after the agent stopped",
            f"- pollers restarted: {lf.poller_restarts}", ""]
    live = [r.livez_ok for r in rs]
    ready = [r.readyz_ok for r in rs]
    wrong = sum(wrong_answers(r) for r in rs)
    out += ["### SIGKILL and restart beside a running app", "",
            f"{len(rs)} restarts; time from the new agent's exec to its first correct answer (polled back to back, "
            "a new connection each):", "",
            "| answer | median | worst |", "| --- | ---: | ---: |",
            f"| first /livez 200 | {ms(statistics.median(live))} | {ms(max(live))} |",
            f"| first /readyz 200 (process and http checks passed) | {ms(statistics.median(ready))} | {ms(max(ready))} |",
            "", f"Wrong answers during the restarts: {wrong} (of {sum(len(r.answers) for r in rs)} answers).", ""]
    (fb, fa), (tb, ta) = lr.fds, lr.tasks
    out += ["### Long run", "",
            f"{lr.runs:.0f} check runs in {lr.seconds:.1f} s ({lr.runs / lr.seconds:.0f}/s) of 8 checks at 20 ms "
            "(exec, http, tcp, redis without connection reuse, postgres, file, process, dns); 8 samples before and after:",
            "", "| measure | before | after |", "| --- | --- | --- |",
            f"| open fds (min-max) | {min(fb)}-{max(fb)} | {min(fa)}-{max(fa)} |",
            f"| asyncio tasks (min-max) | {min(tb)}-{max(tb)} | {min(ta)}-{max(ta)} |",
            f"| RSS | {lr.rss_mib[0]:.1f} MiB | {lr.rss_mib[1]:.1f} MiB |", "",
            f"Runs that did not succeed: {lr.not_success}; pollers restarted: {lr.poller_restarts}.", ""]
    out += ["### Fuzzed config inputs", "", "| family | inputs | outcome counts |", "| --- | ---: | --- |"]
    for name, counts in fz.items():
        out.append(f"| {name} | {sum(counts.values())} | " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + " |")
    if tests is not None:
        rows, summary = tests
        out += ["", "### Faults and inputs of tests/reliability", "", f"`{summary}`", "", "| test | outcome |", "| --- | --- |"]
        for name, outcome, n in sorted(rows):
            label = {"PASSED": "survived", "XFAIL": "known bug (strict xfail)"}.get(outcome, outcome)
            out.append(f"| `{name}` | {label}{f' ({n} cases)' if n > 1 else ''} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the wrk load (default 30)")
    parser.add_argument("--connections", type=int, default=20, help="wrk connections (default 20)")
    parser.add_argument("--delay-ms", type=int, default=10, help="each connection's pause between requests (default 10)")
    parser.add_argument("--slow-clients", type=int, default=300, help="slow clients during the load (default 300)")
    parser.add_argument("--restarts", type=int, default=10, help="SIGKILL restarts (default 10)")
    parser.add_argument("--runs", type=int, default=20000, help="check runs of the long run (default 20000)")
    parser.add_argument("--fuzz", type=int, default=2000, help="fuzzed inputs per family (default 2000)")
    parser.add_argument("--no-tests", action="store_true", help="do not run tests/reliability")
    args = parser.parse_args()
    began = time.monotonic()
    busy = psutil.cpu_percent(interval=1.0)
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as name:
        folder = Path(name)
        log("1. load under faults")
        lf = load_under_faults(args.seconds, args.connections, args.delay_ms, args.slow_clients, folder)
        log("2. restarts")
        rs = restarts(args.restarts, folder)
        log("3. long run")
        lr = long_run(args.runs, folder)
        log("4. fuzz")
        fz = fuzz(args.fuzz)
        tests = None
        if not args.no_tests:
            log("5. tests/reliability")
            tests = test_outcomes()
    print(f"Reliability benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPUs "
          f"({platform.machine()}, {platform.system()} {platform.release()}), Python {platform.python_version()}; "
          f"machine {busy:.0f}% busy just before the run; {time.monotonic() - began:.0f} s in all.\n")
    print(report(lf, rs, lr, fz, tests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
