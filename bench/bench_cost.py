"""Benchmark of what the agent costs a fleet (issue 12): CPU per check run, idle CPU, 1,000 checks, a pod, memory.

Run as `.venv/bin/python bench/bench_cost.py` from the repository root (about 8 minutes; `--short` about 4;
`--part NAME` runs one part). Every figure is a ratio against a floor measured in the same run, side by side,
because the machine is shared: the agent and a floor program (bench/floor_loop.py: a minimal asyncio loop doing
the same work on the same schedule) run at the same time against the same helpers, and the CPU each used over
the same window is read from /proc/PID/task/*/schedstat (nanoseconds on a CPU, every thread).

Parts:
- `runs`: 50 checks of one type at 1 s, for file, tcp and http (target: agent ≤ 0.8 x the floor per run), and
  reported for exec, redis, postgres, grpc and dns (the machine's Redis and PostgreSQL, a grpc health server
  in this process, dnsmasq on loopback).
- `idle`: the agent on its default config against a bare aiohttp server (bench/bare_server.py), CPU share of a
  core (target ≤ 0.05 %) and wake-ups (voluntary context switches) per second.
- `scale`: 1,000 checks at 1 s (400 tcp, 400 file, 100 http, 100 hanging) beside the floor's same mix: CPU
  (target ≤ 0.8 x the floor), `/readyz` p99 on one keep-alive connection while they run (target < 10 ms), no
  check ever stale, and how evenly the tcp runs spread over the second (accepts per 100 ms slot).
- `pod`: a typical pod over 60 s (app watched by app.match; process, http, tcp, redis and postgres checks at
  10 s; the kubelet's three probes every 10 s on new connections; a scrape every 15 s): CPU share, and the cost
  of each part measured on the same agent.
- `memory`: RSS of the agent (default config; and with a redis and a postgres check) against an interpreter
  that only imports the declared stack (and the two clients): target ≤ floor + 2 MiB.
- `startup`: Popen to the first `/livez` 200, agent and bare aiohttp alternating.

Every process it starts is stopped by its pid; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from bench_probes import (  # noqa: E402
    SERVING_AGENT,
    SERVING_BARE,
    Child,
    Targets,
    bare_command,
    code_state,
    http_get,
    log,
    stop_all,
    time_to_first_probe,
    verdict,
)

HOST = "127.0.0.1"
MIB = 1024 * 1024
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_RUN_RATIO, TARGET_IDLE_PCT, TARGET_P99_MS, TARGET_RSS_MIB, TARGET_START_S = 0.8, 0.05, 10.0, 2.0, 0.3
lines: list[str] = []  # the report, printed at the end


def out(line: str = "") -> None:
    lines.append(line)


# --- CPU and wake-ups from /proc --------------------------------------------------------------------------------

def cpu_ns(pid: int) -> int:
    """Nanoseconds every live thread of `pid` spent on a CPU (schedstat's first field)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as handle:
            total += int(handle.read().split()[0])
    return total


def wakeups(pid: int) -> int:
    """Voluntary context switches of every live thread: each is a sleep the thread woke from."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as handle:
            for line in handle:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


@dataclass
class Window:
    """CPU (s) and wake-ups of several processes over the same stretch of time."""

    seconds: float
    cpu: dict[str, float]
    wakes: dict[str, int]


def window(pids: dict[str, int], seconds: float) -> Window:
    before = {n: (cpu_ns(p), wakeups(p)) for n, p in pids.items()}
    start = time.monotonic()
    time.sleep(seconds)
    after = {n: (cpu_ns(p), wakeups(p)) for n, p in pids.items()}
    elapsed = time.monotonic() - start
    return Window(elapsed, {n: (after[n][0] - before[n][0]) / 1e9 for n in pids},
                  {n: after[n][1] - before[n][1] for n in pids})


# --- helpers the checks talk to ---------------------------------------------------------------------------------

@contextlib.contextmanager
def grpc_server() -> Iterator[str]:
    import concurrent.futures

    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    server = grpc.server(executor)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        yield f"{HOST}:{port}"
    finally:
        server.stop(None).wait(10)
        executor.shutdown(wait=False)


@contextlib.contextmanager
def dns_server() -> Iterator[str]:
    from tests.integration.dns_server import dnsmasq

    with dnsmasq("--address=/bench.test/127.0.0.1") as server:
        yield server.address


# --- processes ------------------------------------------------------------------------------------------------

class Floor(Child):
    """bench/floor_loop.py: counts its runs, reported on SIGUSR1."""

    def __init__(self, name: str, args: list[str], folder: str) -> None:
        import re
        super().__init__(name, [sys.executable, str(HERE / "floor_loop.py"), *args], re.compile(r"(ready)()"), folder)

    def start(self, timeout: float = 20.0) -> Floor:
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(self.command, stdout=log_file, stderr=subprocess.STDOUT, cwd=HERE.parent)
        deadline = time.monotonic() + timeout
        while "ready" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{self.text()}")
            time.sleep(0.02)
        return self

    def runs(self) -> int:
        before = self.text().count("runs ")
        self.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while self.text().count("runs ") == before and time.monotonic() < deadline:
            time.sleep(0.01)
        return int(self.text().rsplit("runs ", 1)[1].split()[0])


def agent_command(port: int, config: str | None = None) -> list[str]:
    """`python -m agent run`: from this tree, or with --agent-root from another (-P: not from the working folder)."""
    command = [sys.executable, *(["-P"] if os.environ.get("BENCH_AGENT_ROOT") else []), "-m", "agent", "run"]
    return [*command, *(["--config", config] if config else []), "--listen", f"{HOST}:{port}"]


def agent(name: str, config: str, folder: str) -> Child:
    path = os.path.join(folder, f"{name}.yaml")
    Path(path).write_text(config, encoding="utf-8")
    return Child(name, agent_command(0, path), SERVING_AGENT, folder)


def check_runs(child: Child) -> float:
    _, body = http_get(child.url("/metrics"))
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith("sidecar_check_runs_total{"))


def states(child: Child) -> dict[str, int]:
    _, body = http_get(child.url("/status"), timeout=30)
    counts: dict[str, int] = {}
    for check in json.loads(body)["checks"].values():
        counts[check["state"]] = counts.get(check["state"], 0) + 1
    return counts


def checks_yaml(entries: list[tuple[str, str]], extra: str = "") -> str:
    """`entries`: (name, inline YAML mapping body); every check in readiness."""
    return "log: {level: info}\n" + extra + "checks:\n" + "".join(f"  {n}: {{{body}}}\n" for n, body in entries)


# --- part: per-run CPU ------------------------------------------------------------------------------------------

@dataclass
class PerRun:
    kind: str
    agent_ms: float
    floor_ms: float | None
    agent_runs: float
    floor_runs: float
    other: str = ""


def per_run(kind: str, agent_body: str, floor_args: list[str] | None, folder: str, seconds: float,
            count: int = 50) -> PerRun:
    log(f"runs: {count} {kind} checks at 1 s, agent and floor side by side for {seconds:g} s")
    body = f"{agent_body}, interval: 1s"
    a = agent(f"agent-{kind}", checks_yaml([(f"{kind}-{i:02d}", body) for i in range(count)]), folder)
    f = Floor(f"floor-{kind}", floor_args, folder) if floor_args else None
    try:
        a.start()
        if f:
            f.start()
        time.sleep(3.0)  # every check has run once or twice; connections kept by the clients are open
        a_before = check_runs(a)
        f_before = f.runs() if f else 0
        w = window({"agent": a.pid, **({"floor": f.pid} if f else {})}, seconds)
        a_runs = check_runs(a) - a_before
        f_runs = (f.runs() - f_before) if f else 0
        failing = {k: v for k, v in states(a).items() if k != "passing"}
    finally:
        stop_all([x for x in (a, f) if x])
    result = PerRun(kind, w.cpu["agent"] / max(a_runs, 1) * 1e3,
                    w.cpu["floor"] / max(f_runs, 1) * 1e3 if f else None, a_runs, f_runs,
                    f"not passing: {failing}" if failing else "")
    log(f"  agent {result.agent_ms:.3f} ms/run ({a_runs:.0f} runs), floor "
        f"{'-' if result.floor_ms is None else f'{result.floor_ms:.3f}'} ms/run ({f_runs} runs) {result.other}")
    return result


def part_runs(folder: str, seconds: float, targets: Targets, kinds: list[str]) -> dict[str, PerRun]:
    stat_path = os.path.join(folder, "heartbeat")
    Path(stat_path).write_text("x")
    specs: dict[str, tuple[str, list[str] | None]] = {
        "file": (f"type: file, path: '{stat_path}'", ["file", "50", "1", stat_path]),
        "tcp": (f"type: tcp, address: '{targets.address('open')}'", ["tcp", "50", "1", targets.address("open")]),
        "http": (f"type: http, url: '{targets.url('http')}'", ["http", "50", "1", targets.url("http")]),
        "exec": ("type: exec, command: ['true']", ["exec", "50", "1", "true"]),
        "redis": (f"type: redis, url: '{REDIS_URL}'", ["redis", "50", "1", REDIS_URL]),
        "postgres": (f"type: postgres, dsn: '{POSTGRES_DSN}'", ["postgres", "50", "1", POSTGRES_DSN]),
    }
    results: dict[str, PerRun] = {}
    with contextlib.ExitStack() as stack:
        for kind in kinds:
            if kind == "grpc":
                address = stack.enter_context(grpc_server())
                body, floor = f"type: grpc, address: '{address}'", ["grpc", "50", "1", address]
            elif kind == "dns":
                server = stack.enter_context(dns_server())
                body, floor = f"type: dns, name: bench.test, nameserver: '{server}'", None
            else:
                body, floor = specs[kind]
            results[kind] = per_run(kind, body, floor, folder, seconds)
    out("### CPU per check run (50 checks of one type at 1 s, agent and floor side by side)")
    out()
    out("| type | agent ms/run | floor ms/run | ratio | target | met | runs agent / floor |")
    out("| --- | ---: | ---: | ---: | --- | --- | ---: |")
    for kind, r in results.items():
        ratio = r.agent_ms / r.floor_ms if r.floor_ms else None
        targeted = kind in ("file", "tcp", "http")
        out(f"| {kind} | {r.agent_ms:.3f} | {'-' if r.floor_ms is None else f'{r.floor_ms:.3f}'} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | {'≤ 0.8' if targeted else 'reported'} | "
            f"{verdict(ratio is not None and ratio <= TARGET_RUN_RATIO) if targeted else ''} | "
            f"{r.agent_runs:.0f} / {r.floor_runs} {r.other} |")
    out()
    return results


# --- part: idle -------------------------------------------------------------------------------------------------

def part_idle(folder: str, seconds: float) -> None:
    log(f"idle: agent (default config) and bare aiohttp side by side for {seconds:g} s")
    a = Child("agent-idle", agent_command(0), SERVING_AGENT, folder)
    b = Child("bare-idle", bare_command(), SERVING_BARE, folder)
    try:
        a.start()
        b.start()
        time.sleep(2.0)
        w = window({"agent": a.pid, "bare": b.pid}, seconds)
    finally:
        stop_all([a, b])
    share = {n: w.cpu[n] / w.seconds * 100 for n in w.cpu}
    rate = {n: w.wakes[n] / w.seconds for n in w.wakes}
    log(f"  agent {share['agent']:.4f} % of a core, {rate['agent']:.2f} wake-ups/s; bare {share['bare']:.4f} %, "
        f"{rate['bare']:.2f}/s")
    out(f"### Idle ({w.seconds:.0f} s, default config, no checks)")
    out()
    out("| process | CPU, % of a core | wake-ups/s | target | met |")
    out("| --- | ---: | ---: | --- | --- |")
    out(f"| agent | {share['agent']:.4f} % | {rate['agent']:.2f} | ≤ {TARGET_IDLE_PCT} % | "
        f"{verdict(share['agent'] <= TARGET_IDLE_PCT)} |")
    out(f"| bare aiohttp | {share['bare']:.4f} % | {rate['bare']:.2f} | | |")
    out()


# --- part: 1,000 checks -----------------------------------------------------------------------------------------

PROBER = """
import http.client, json, sys, time
port, every, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
conn, latencies, errors, stale = http.client.HTTPConnection("127.0.0.1", port, timeout=5), [], 0, 0
next_at = end = time.monotonic()
end += seconds
while time.monotonic() < end:
    start = time.perf_counter()
    try:
        conn.request("GET", "/readyz")
        stale += b"stale" in conn.getresponse().read()
        latencies.append((time.perf_counter() - start) * 1e3)
    except (OSError, http.client.HTTPException):
        errors += 1
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    next_at += every
    time.sleep(max(0.0, next_at - time.monotonic()))
print(json.dumps({"latencies": latencies, "errors": errors, "stale": stale}))
"""


class Prober:
    """GET /readyz on one keep-alive connection every `every` seconds, from a process of its own (so that no
    thread of this one competes with it for the GIL); latencies in ms."""

    def __init__(self, port: int, seconds: float, every: float = 0.01) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PROBER, str(port), str(every), str(seconds)],
                                     stdout=subprocess.PIPE, text=True)
        self.latencies: list[float] = []
        self.errors = self.stale = 0

    def result(self) -> Prober:
        output, _ = self.proc.communicate(timeout=120)
        found = json.loads(output)
        self.latencies, self.errors, self.stale = found["latencies"], found["errors"], found["stale"]
        return self


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def part_scale(folder: str, seconds: float, targets: Targets) -> None:
    stat_path = os.path.join(folder, "scale-file")
    Path(stat_path).write_text("x")
    entries = [(f"tcp-{i:03d}", f"type: tcp, address: '{targets.address('open')}', interval: 1s") for i in range(400)]
    entries += [(f"file-{i:03d}", f"type: file, path: '{stat_path}', interval: 1s") for i in range(400)]
    entries += [(f"http-{i:03d}", f"type: http, url: '{targets.url('http')}', interval: 1s") for i in range(100)]
    entries += [(f"hang-{i:03d}", f"type: http, url: '{targets.url('hang')}', interval: 1s, timeout: 1s") for i in range(100)]
    log(f"scale: 1,000 checks at 1 s beside the floor's same mix, {seconds:g} s of CPU, then {seconds:g} s of probes")
    a = agent("agent-scale", checks_yaml(entries), folder)
    f = Floor("floor-mix", ["mix", "0", "1", ",".join((targets.address("open"), stat_path, targets.url("http"),
                                                          targets.url("hang")))], folder)
    try:
        a.start()
        f.start()
        time.sleep(6.0)  # past the hanging checks' three timeouts
        a_before, f_before = check_runs(a), f.runs()
        w = window({"agent": a.pid, "floor": f.pid}, seconds)
        a_runs, f_runs = check_runs(a) - a_before, f.runs() - f_before
        f.stop()
        targets.accept_times.clear()
        bare = Child("bare-scale", bare_command(), SERVING_BARE, folder).start()  # the machine's own noise, side by side
        # No /status meanwhile (a document of 1,000 checks takes the loop a while): the probes' own answers say
        # whether a check went stale, since /readyz names every failing check and why.
        prober, reference = Prober(a.port, seconds), Prober(bare.port, seconds)
        prober.result()
        reference.result()
        bare.stop()
        accepts = list(targets.accept_times)
        states_after = states(a)
        rss = psutil.Process(a.pid).memory_info().rss / MIB
    finally:
        stop_all([a, f])
    stale = prober.stale + states_after.get("stale", 0)
    # Spread: the tcp accepts by their phase in the second, per 50 ms slot. The engine spreads the checks of one
    # interval over half of it, so half the slots hold runs: an even spread puts 10 % of them in the fullest slot.
    slots = [0] * 20
    for t in accepts:
        slots[int((t % 1.0) * 20) % 20] += 1
    fullest = max(slots) / max(len(accepts), 1) * 100
    p99 = percentile(prober.latencies, 0.99)
    ratio = w.cpu["agent"] / w.cpu["floor"]
    out("### 1,000 checks at 1 s (400 tcp, 400 file, 100 http, 100 hanging)")
    out()
    out("| figure | value | target | met |")
    out("| --- | ---: | --- | --- |")
    out(f"| agent CPU, share of a core | {w.cpu['agent'] / w.seconds * 100:.1f} % ({a_runs / w.seconds:.0f} runs/s) | | |")
    out(f"| floor CPU, same mix, same window | {w.cpu['floor'] / w.seconds * 100:.1f} % ({f_runs / w.seconds:.0f} runs/s) | | |")
    out(f"| agent / floor CPU | {ratio:.2f} | ≤ 0.8 | {verdict(ratio <= TARGET_RUN_RATIO)} |")
    out(f"| `/readyz` p50 / p99 / max, one keep-alive connection, {len(prober.latencies)} requests | "
        f"{percentile(prober.latencies, 0.5):.2f} / {p99:.2f} / {max(prober.latencies, default=0):.2f} ms | "
        f"p99 < {TARGET_P99_MS:g} ms | {verdict(p99 < TARGET_P99_MS)} |")
    out(f"| the same against a bare aiohttp server at the same time | {percentile(reference.latencies, 0.5):.2f} / "
        f"{percentile(reference.latencies, 0.99):.2f} / {max(reference.latencies, default=0):.2f} ms | | |")
    out(f"| `/readyz` answers naming a stale check, and stale checks in /status after | {stale} | 0 | "
        f"{verdict(stale == 0)} |")
    out(f"| tcp runs in the fullest 50 ms of the second (of {len(accepts)}) | {fullest:.1f} % | about 10 % | "
        f"{verdict(fullest < 15)} |")
    out(f"| RSS | {rss:.1f} MiB | | |")
    out()
    out(f"States after: {states_after}; probe errors {prober.errors}.")
    out()


# --- part: a typical pod ----------------------------------------------------------------------------------------

def part_pod(folder: str, seconds: float, targets: Targets) -> None:
    marker = f"bench-cost-app-{os.getpid()}"
    app_port = targets.ports["http"]
    app = subprocess.Popen([sys.executable, "-c", f"import signal; signal.pause()  # {marker}"])
    dependencies = (f"  web: {{type: http, url: 'http://{HOST}:{app_port}/', probes: [liveness, readiness]}}\n"
                    f"  port: {{type: tcp, address: '{HOST}:{app_port}'}}\n"
                    f"  cache: {{type: redis, url: '{REDIS_URL}'}}\n"
                    f"  db: {{type: postgres, dsn: '{POSTGRES_DSN}'}}\n")
    config = (f"log: {{level: info}}\napp: {{match: {{cmdline: '{marker}'}}}}\nchecks:\n"
              "  app: {type: process, probes: [liveness]}\n" + dependencies)
    a = agent("agent-pod", config, folder)
    # Beside it, the same four checks alone (no app to watch, nobody asking): what the checks cost by themselves.
    b = agent("agent-pod-checks", "log: {level: info}\nchecks:\n" + dependencies, folder)
    log(f"pod: a typical pod for {seconds:g} s")
    try:
        a.start()
        b.start()
        time.sleep(3.0)
        pid = a.pid
        stop = threading.Event()

        def kubelet() -> None:
            n = 0
            while not stop.wait(10.0 / 3):  # the three probes, each every 10 s, spread
                http_get(a.url(("/livez", "/readyz", "/startupz")[n % 3]))
                n += 1

        def scraper() -> None:
            while not stop.wait(15.0):
                http_get(a.url("/metrics"))

        threads = [threading.Thread(target=kubelet, daemon=True), threading.Thread(target=scraper, daemon=True)]
        for t in threads:
            t.start()
        w = window({"agent": pid, "checks": b.pid}, seconds)
        stop.set()
        for t in threads:
            t.join(5)
        # What each part costs, on the same agent: bursts of probes and scrapes.
        base = cpu_ns(pid)
        for _ in range(100):
            http_get(a.url("/readyz"))
        probe_ms = (cpu_ns(pid) - base) / 1e6 / 100
        base = cpu_ns(pid)
        for _ in range(20):
            http_get(a.url("/metrics"))
        scrape_ms = (cpu_ns(pid) - base) / 1e6 / 20
        state = states(a)
    finally:
        stop_all([a, b])
        app.kill()
        app.wait(5)
    share = w.cpu["agent"] / w.seconds * 100
    out(f"### A typical pod ({w.seconds:.0f} s)")
    out()
    out(f"Agent CPU {share:.3f} % of a core ({w.cpu['agent'] * 1e3:.1f} ms over {w.seconds:.0f} s), "
        f"{w.wakes['agent'] / w.seconds:.1f} wake-ups/s; check states {state}.")
    out()
    out("| part | rate | cost each | share of a core |")
    out("| --- | ---: | ---: | ---: |")
    out(f"| probe on a new connection | 0.3/s | {probe_ms:.3f} ms | {probe_ms * 0.3 / 10:.4f} % |")
    out(f"| scrape of /metrics | 0.067/s | {scrape_ms:.3f} ms | {scrape_ms / 15 / 10:.4f} % |")
    checks = w.cpu["checks"] / w.seconds * 100
    out(f"| http, tcp, redis and postgres checks at 10 s (an agent with only them, same window) | 0.4 runs/s | "
        f"{w.cpu['checks'] * 1e3 / max(w.seconds * 0.4, 1):.3f} ms a run | {checks:.4f} % |")
    out("| the app watcher (a process lookup every 1 s) and the process check: the rest | 1/s | | "
        f"{share - checks - probe_ms * 0.3 / 10 - scrape_ms / 15 / 10:.4f} % |")
    out()


# --- part: memory and start-up ----------------------------------------------------------------------------------

def part_memory(folder: str) -> None:
    log("memory: the agent against the import floor")
    rows = []
    for label, config, clients in (("default config", None, False),
                                   ("a redis and a postgres check", checks_yaml([
                                       ("cache", f"type: redis, url: '{REDIS_URL}'"),
                                       ("db", f"type: postgres, dsn: '{POSTGRES_DSN}'")]), True)):
        if config is None:
            a = Child("agent-mem", agent_command(0), SERVING_AGENT, folder)
        else:
            a = agent("agent-mem-clients", config, folder)
        f = Floor("floor-imports", ["imports", *(["clients"] if clients else [])], folder)
        try:
            a.start()
            f.start()
            time.sleep(3.0)
            http_get(a.url("/readyz"))
            http_get(a.url("/metrics"))
            rss_a = psutil.Process(a.pid).memory_info().rss / MIB
            rss_f = psutil.Process(f.pid).memory_info().rss / MIB
        finally:
            stop_all([a, f])
        rows.append((label, rss_a, rss_f))
        log(f"  {label}: agent {rss_a:.1f} MiB, floor {rss_f:.1f} MiB")
    out("### Memory (RSS after a probe and a scrape)")
    out()
    out("| agent | agent RSS | import floor | over the floor | target | met |")
    out("| --- | ---: | ---: | ---: | --- | --- |")
    for label, rss_a, rss_f in rows:
        out(f"| {label} | {rss_a:.1f} MiB | {rss_f:.1f} MiB | {rss_a - rss_f:+.1f} MiB | ≤ +{TARGET_RSS_MIB:g} MiB | "
            f"{verdict(rss_a - rss_f <= TARGET_RSS_MIB)} |")
    out()


def part_startup(starts: int) -> None:
    log(f"startup: {starts} starts each")
    agent_s, bare_s = [], []
    for _ in range(starts):
        agent_s.append(time_to_first_probe(agent_command))
        bare_s.append(time_to_first_probe(bare_command))
    med = statistics.median(agent_s)
    out("### Start-up (Popen to the first `/livez` 200)")
    out()
    out(f"Agent median {med:.3f} s, worst {max(agent_s):.3f} s; bare aiohttp median {statistics.median(bare_s):.3f} s "
        f"(agent / bare {med / statistics.median(bare_s):.2f}; target ≈ {TARGET_START_S} s on a quiet machine: "
        f"{verdict(med <= TARGET_START_S * 1.15)}). Agent: "
        + ", ".join(f"{s:.3f}" for s in agent_s) + ".")
    out()


PARTS = ("runs", "idle", "scale", "pod", "memory", "startup")
KINDS = ("file", "tcp", "http", "exec", "redis", "postgres", "grpc", "dns")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--part", action="append", choices=PARTS, help="run only this part (repeatable)")
    parser.add_argument("--kind", action="append", choices=KINDS, help="with the runs part: only this type")
    parser.add_argument("--short", action="store_true", help="shorter windows (about 4 minutes in all)")
    parser.add_argument("--agent-root", help="run the agent package found in this folder (another version, such "
                        "as `git archive REV agent | tar -x -C DIR`) rather than this tree's")
    args = parser.parse_args()
    if args.agent_root:
        os.environ["PYTHONPATH"] = os.environ["BENCH_AGENT_ROOT"] = os.path.abspath(args.agent_root)
    parts = args.part or list(PARTS)
    runs_s, idle_s, scale_s, pod_s, starts = (8, 15, 8, 20, 3) if args.short else (20, 60, 20, 60, 10)
    began, busy = time.monotonic(), psutil.cpu_percent(interval=1.0)
    code = f"the agent from {args.agent_root}" if args.agent_root else f"code {code_state()}"
    out(f"Cost benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}; {code}; {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; machine {busy:.0f}% busy just before the run"
        f"{' (short mode)' if args.short else ''}; `{' '.join(['bench/bench_cost.py', *sys.argv[1:]])}`.")
    out()
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as folder, Targets() as targets, \
            contextlib.ExitStack() as report:
        report.callback(lambda: print("\n".join(lines)))  # what was measured, even when a later part fails
        if "runs" in parts:
            part_runs(folder, runs_s, targets, args.kind or list(KINDS))
        if "idle" in parts:
            part_idle(folder, idle_s)
        if "scale" in parts:
            part_scale(folder, scale_s, targets)
        if "pod" in parts:
            part_pod(folder, pod_s, targets)
        if "memory" in parts:
            part_memory(folder)
        if "startup" in parts:
            part_startup(starts)
    log(f"done in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
