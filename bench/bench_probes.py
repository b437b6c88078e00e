"""Benchmark of the probe server (issue 2): throughput, tail latency, memory and start time.

Run as `.venv/bin/python bench/bench_probes.py` from the repository root; it needs `wrk` on PATH, takes about
three minutes, and prints a markdown table (progress goes to stderr). What it measures, in one run:

1. `/readyz` requests/s and p99 latency of the agent on its embedded default config (no checks) against a bare
   aiohttp server (bench/bare_server.py), both under the same `wrk` load, rounds alternating, medians reported;
2. the same load against an agent running 200 checks: 50 http checks against a helper that accepts and never
   answers (they hang until their 1 s timeout, every 2 s) and 150 tcp checks against a listening helper
   (every 1 or 2 s); the helpers run in a thread of this process;
3. the RSS of each server process after its load;
4. the time from Popen to the first `GET /livez` answered 200, several times.

Besides, for reading the figures: the server's CPU time per request and the CPU the rest of the machine used
during each round (a shared 2-core machine makes both wrk and the server compete with anything else running),
and one round with a single connection, whose p99 is the per-probe latency without queueing behind 49 others.

Every process it starts is stopped by its pid before it exits; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # for tests.servers, when run as bench/bench_probes.py

from tests.servers import free_port  # noqa: E402

HOST = "127.0.0.1"
MIB = 1024 * 1024
SERVING_AGENT = re.compile(r"serving probes on (\S+):(\d+)")
SERVING_BARE = re.compile(r"serving on (\S+):(\d+)")

# Targets of issue 2.
TARGET_RPS_RATIO = 0.8
TARGET_P99_MS = 5.0
TARGET_RSS_EXTRA_MIB = 10.0
TARGET_START_S = 0.6

HANGING, PASSING = 50, 150


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- helpers the checks talk to --------------------------------------------------------------------------------

HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok\n"


class Targets:
    """Loopback listeners in a thread: `open` accepts and closes (recording when), `http` answers 200 to one
    request, `hang` accepts and never answers."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.listeners = {name: self._listen(name) for name in ("open", "http", "hang")}
        self.ports = {name: s.getsockname()[1] for name, s in self.listeners.items()}
        self.accept_times: list[float] = []
        self.accepted = dict.fromkeys(self.listeners, 0)
        self.held: dict[socket.socket, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="targets", daemon=True)

    def _listen(self, name: str) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        sock.listen(4096)
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, name)
        return sock

    def address(self, name: str) -> str:
        return f"{HOST}:{self.ports[name]}"

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}/"

    def __enter__(self) -> Targets:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in (*self.held, *self.listeners.values()):
            sock.close()
        self.selector.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock in self.listeners.values():
                    self._accept(sock, key.data)
                else:
                    self._read(sock, key.data)

    def _accept(self, listener: socket.socket, name: str) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                conn, _ = listener.accept()
                self.accepted[name] += 1
                if name == "open":
                    self.accept_times.append(time.monotonic())
                    conn.close()
                    continue
                conn.setblocking(False)
                self.held[conn] = name
                self.selector.register(conn, selectors.EVENT_READ, name)

    def _read(self, conn: socket.socket, name: str) -> None:
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and name == "http" and b"\r\n\r\n" in data:
            with contextlib.suppress(OSError):
                conn.sendall(HTTP_OK)
            data = b""
        if not data:
            self.selector.unregister(conn)
            self.held.pop(conn, None)
            conn.close()



def checks_config(targets: Targets) -> str:
    """200 checks in readiness: 50 hanging http checks (timeout 1s, every 2s), 150 passing tcp checks (every 1s or 2s)."""
    lines = ["log: {level: info, format: json}", "checks:"]
    for i in range(HANGING):
        lines += [f"  hang-{i:03d}:", "    type: http", f"    url: http://{HOST}:{targets.ports['hang']}/never",
                  "    timeout: 1s", "    interval: 2s"]
    for i in range(PASSING):
        lines += [f"  tcp-{i:03d}:", "    type: tcp", f"    address: {HOST}:{targets.ports['open']}",
                  "    timeout: 1s", f"    interval: {1 + i % 2}s"]
    return "\n".join(lines) + "\n"


# --- child processes -------------------------------------------------------------------------------------------

class Child:
    """A server process started here, its log in a file, stopped by its pid (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, command: Sequence[str], serving: re.Pattern[str], folder: str) -> None:
        self.name, self.command, self.serving = name, list(command), serving
        self.log_path = os.path.join(folder, f"{name}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def start(self, timeout: float = 20.0) -> Child:
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, cwd=HERE.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = self.serving.search(self.text())
            if match:
                self.port = int(match.group(2))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not start serving within {timeout}s:\n{self.text()}")

    def text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def rss_mib(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / MIB

    def stop(self) -> None:
        stop_all([self])


def stop_all(children: Sequence[Child]) -> None:
    """SIGTERM each (at once: the agent drains for its default 5 s before it exits), wait, SIGKILL what is left."""
    running = [c.proc for c in children if c.proc is not None and c.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in running:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for child in children:
        child.proc = None


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a throwaway process (a start-time sample) by its pid and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


def agent_command(port: int, config: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "agent", "run"]
    if config is not None:
        command += ["--config", config]
    return [*command, "--listen", f"{HOST}:{port}"]


def bare_command(port: int = 0) -> list[str]:
    return [sys.executable, str(HERE / "bare_server.py"), "--listen", f"{HOST}:{port}"]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- wrk -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> Load:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if not match:
            raise ValueError(f"wrk output lacks /{pattern}/:\n{output}")
        return match

    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return Load(
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=_ms(find(r"^\s+50%\s+(\S+)").group(1)),
        p99_ms=_ms(find(r"^\s+99%\s+(\S+)").group(1)),
        max_ms=_ms(find(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)").group(1)),
        requests=int(find(r"^\s+(\d+) requests in").group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def wrk(url: str, seconds: float, connections: int) -> Load:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return parse_wrk(done.stdout)


@dataclass(frozen=True)
class Round:
    """One wrk round against one server, with where the machine's CPU went meanwhile."""

    load: Load
    server_cpu_s: float  # CPU time the server process used
    other_cpu_s: float  # CPU time of everything but the server, wrk and this process (other work on the machine)

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / max(self.load.requests, 1) * 1e6


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O) since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "guest", 0.0) - \
        getattr(times, "guest_nice", 0.0) - getattr(times, "steal", 0.0)


def own_cpu_s() -> float:
    """CPU seconds of this process and of its reaped children (wrk, once it has exited)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measured(child: Child, path: str, seconds: float, connections: int) -> Round:
    proc = psutil.Process(child.pid)
    server_before, busy_before, own_before = sum(proc.cpu_times()[:2]), busy_cpu_s(), own_cpu_s()
    load = wrk(child.url(path), seconds, connections)
    server = sum(proc.cpu_times()[:2]) - server_before
    other = busy_cpu_s() - busy_before - server - (own_cpu_s() - own_before)
    log(f"{child.name}: {load.rps:,.0f} req/s, p99 {load.p99_ms:.2f} ms, {server / max(load.requests, 1) * 1e6:.1f} us "
        f"CPU/request, other processes {max(other, 0.0):.1f} CPU s")
    return Round(load, server, max(other, 0.0))


# --- start time ------------------------------------------------------------------------------------------------

REQUEST = f"GET /livez HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()


def answered_200(port: int) -> bool:
    """One quick try: connect (50 ms at most), ask /livez, True on a 200 status line."""
    try:
        with socket.create_connection((HOST, port), timeout=0.05) as sock:
            sock.settimeout(1.0)
            sock.sendall(REQUEST)
            head = b""
            while b"\r\n" not in head and len(head) < 64:
                chunk = sock.recv(64)
                if not chunk:
                    break
                head += chunk
            return head.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def time_to_first_probe(command_for: Callable[[int], list[str]], limit: float = 10.0) -> float:
    """Seconds from Popen to the first /livez answered 200, polling every 5 ms; the process is stopped after."""
    port = free_port()  # chosen here: the start-time poller must know the port before the agent logs it
    start = time.perf_counter()
    proc = subprocess.Popen(command_for(port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=HERE.parent)
    try:
        while time.perf_counter() - start < limit:
            if answered_200(port):
                return time.perf_counter() - start
            if proc.poll() is not None:
                error = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{command_for(port)} exited with {proc.returncode} before answering:\n{error}")
            time.sleep(0.005)
        raise RuntimeError(f"no /livez answer within {limit}s from {command_for(port)}")
    finally:
        kill(proc)
        if proc.stderr is not None:
            proc.stderr.close()


# --- the benchmark ---------------------------------------------------------------------------------------------

def check_runs_total(child: Child) -> float:
    """The sum of sidecar_check_runs_total over every check and result, from /metrics."""
    _, body = http_get(child.url("/metrics"))
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith("sidecar_check_runs_total{"))


def check_states(child: Child) -> dict[str, int]:
    """How many checks are in each /status state (passing, failing, unknown, stale)."""
    _, body = http_get(child.url("/status"))
    counts: dict[str, int] = {}
    for check in json.loads(body)["checks"].values():
        counts[check["state"]] = counts.get(check["state"], 0) + 1
    return counts


def wait_until(predicate: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {limit}s waiting for {what}")
        time.sleep(0.25)


def code_state() -> str:
    """The commit measured, and whether agent/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=HERE.parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent"], capture_output=True, text=True,
                               timeout=10, cwd=HERE.parent, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head}" + (f" with {len(dirty)} uncommitted change(s) under agent/" if dirty else " (agent/ clean)")


@dataclass
class Figures:
    agent: list[Round]
    bare: list[Round]
    checks: list[Round]
    rss_agent: float
    rss_bare: float
    rss_checks: float
    states_before: dict[str, int]
    states_after: dict[str, int]
    check_runs_per_s: float
    hang_accepted: int
    start_agent: list[float]
    start_bare: list[float]
    light: dict[str, Round]  # one round with a single connection: per-probe latency without queueing


EXPECTED_RUNS_PER_S = PASSING / 2 * (1 / 1 + 1 / 2) + HANGING / 2  # the schedule of checks_config


def run(seconds: float, rounds: int, check_rounds: int, connections: int, starts: int, light_seconds: float) -> Figures:
    with tempfile.TemporaryDirectory(prefix="bench-probes-") as folder, contextlib.ExitStack() as stack:
        # 1. The agent (default config) against bare aiohttp, rounds alternating; 3. their RSS after the same load.
        log("starting the agent (default config) and the bare aiohttp server")
        agent = Child("agent-default", agent_command(0), SERVING_AGENT, folder)
        stack.callback(agent.stop)
        bare = Child("bare", bare_command(), SERVING_BARE, folder)
        stack.callback(bare.stop)
        agent.start()
        bare.start()
        for child in (agent, bare):
            code = http_get(child.url("/readyz"))[0]
            if code != 200:
                raise RuntimeError(f"{child.name} answers /readyz with {code}, not 200")
            wrk(child.url("/readyz"), 2, connections)  # warm-up, not counted
        agent_rounds: list[Round] = []
        bare_rounds: list[Round] = []
        for index in range(rounds):
            pairs = [(agent, agent_rounds), (bare, bare_rounds)]
            for child, results in pairs if index % 2 == 0 else pairs[::-1]:
                results.append(measured(child, "/readyz", seconds, connections))
        light = {"agent": measured(agent, "/readyz", light_seconds, 1), "bare": measured(bare, "/readyz", light_seconds, 1)}
        rss_agent, rss_bare = agent.rss_mib(), bare.rss_mib()
        stop_all([agent, bare])

        # 2. The 200-check agent under the same load; 3. its RSS after.
        targets = stack.enter_context(Targets())
        config = os.path.join(folder, "checks.yaml")
        Path(config).write_text(checks_config(targets), encoding="utf-8")
        log(f"starting the agent with {HANGING + PASSING} checks ({HANGING} hanging, {PASSING} passing)")
        checked = Child("agent-200-checks", agent_command(0, config), SERVING_AGENT, folder)
        stack.callback(checked.stop)
        checked.start()
        # Settled: every passing check has passed, every hanging one has failed its 3 timeouts (about 5 s).
        settled = {"passing": PASSING, "failing": HANGING}
        wait_until(lambda: check_states(checked) == settled, 30, f"{PASSING} checks passing and {HANGING} failing")
        states_before = check_states(checked)
        wrk(checked.url("/readyz"), 2, connections)  # warm-up, not counted
        runs_before, clock_before = check_runs_total(checked), time.monotonic()
        check_results = [measured(checked, "/readyz", seconds, connections) for _ in range(check_rounds)]
        runs_per_s = (check_runs_total(checked) - runs_before) / (time.monotonic() - clock_before)
        states_after = check_states(checked)
        light["checks"] = measured(checked, "/readyz", light_seconds, 1)
        rss_checks = checked.rss_mib()
        checked.stop()

        # 4. Popen to the first answered /livez, agent and bare alternating.
        log(f"timing {starts} starts of each")
        start_agent: list[float] = []
        start_bare: list[float] = []
        for _ in range(starts):
            start_agent.append(time_to_first_probe(agent_command))
            start_bare.append(time_to_first_probe(bare_command))
        log("agent starts: " + ", ".join(f"{s:.3f}" for s in start_agent))

    return Figures(agent_rounds, bare_rounds, check_results, rss_agent, rss_bare, rss_checks, states_before,
                   states_after, runs_per_s, targets.accepted["hang"], start_agent, start_bare, light)


def med(rounds: list[Round], value: Callable[[Round], float]) -> float:
    return statistics.median(value(r) for r in rounds)


def verdict(ok: bool) -> str:
    return "**yes**" if ok else "**NO**"


def table(f: Figures, seconds: float, connections: int) -> str:
    a_rps, b_rps, c_rps = (med(x, lambda r: r.load.rps) for x in (f.agent, f.bare, f.checks))
    a_p99, b_p99, c_p99 = (med(x, lambda r: r.load.p99_ms) for x in (f.agent, f.bare, f.checks))
    a_cpu, b_cpu, c_cpu = (med(x, lambda r: r.cpu_us_per_request) for x in (f.agent, f.bare, f.checks))
    ratio = a_rps / b_rps
    extra = f.rss_agent - f.rss_bare
    s_med, s_max = statistics.median(f.start_agent), max(f.start_agent)
    n = HANGING + PASSING
    answers = sorted({"503" if r.load.non_2xx == r.load.requests else "200" if r.load.non_2xx == 0 else "mixed"
                      for r in f.checks})
    rows = [
        ("`/readyz` req/s, agent, default config", f"{a_rps:,.0f}", "", ""),
        ("`/readyz` req/s, bare aiohttp", f"{b_rps:,.0f}", "", ""),
        ("req/s ratio agent / bare (medians)", f"{ratio:.2f}", f"≥ {TARGET_RPS_RATIO}", verdict(ratio >= TARGET_RPS_RATIO)),
        ("server CPU per request, agent / bare", f"{a_cpu:.1f} / {b_cpu:.1f} µs (ratio {b_cpu / a_cpu:.2f})", "", ""),
        ("`/readyz` p99, agent, default config", f"{a_p99:.2f} ms", "", ""),
        ("`/readyz` p99, bare aiohttp", f"{b_p99:.2f} ms", "", ""),
        (f"`/readyz` req/s, agent, {n} checks (answers {', '.join(answers)})", f"{c_rps:,.0f}", "", ""),
        (f"`/readyz` p99, agent, {n} checks", f"{c_p99:.2f} ms", f"< {TARGET_P99_MS:g} ms", verdict(c_p99 < TARGET_P99_MS)),
        (f"server CPU per request, agent, {n} checks", f"{c_cpu:.1f} µs", "", ""),
        (f"`/readyz` p99 with 1 connection (no queueing): agent / bare / agent with {n} checks",
         " / ".join(f"{f.light[k].load.p99_ms:.2f}" for k in ("agent", "bare", "checks")) + " ms", "", ""),
        ("RSS after load, agent, default config", f"{f.rss_agent:.1f} MiB", "", ""),
        ("RSS after load, bare aiohttp", f"{f.rss_bare:.1f} MiB", "", ""),
        ("RSS agent minus bare", f"{extra:+.1f} MiB", f"≤ {TARGET_RSS_EXTRA_MIB:g} MiB",
         verdict(extra <= TARGET_RSS_EXTRA_MIB)),
        (f"RSS after load, agent, {n} checks", f"{f.rss_checks:.1f} MiB", "", ""),
        (f"Popen → first `/livez` 200, agent, median of {len(f.start_agent)}", f"{s_med:.3f} s",
         f"≤ {TARGET_START_S:g} s", verdict(s_med <= TARGET_START_S)),
        (f"Popen → first `/livez` 200, agent, worst of {len(f.start_agent)}", f"{s_max:.3f} s",
         f"≤ {TARGET_START_S:g} s", verdict(s_max <= TARGET_START_S)),
        (f"Popen → first `/livez` 200, bare aiohttp, median / worst of {len(f.start_bare)}",
         f"{statistics.median(f.start_bare):.3f} / {max(f.start_bare):.3f} s", "", ""),
    ]
    out = ["| figure | value | target | met |", "| --- | ---: | --- | --- |"]
    out += [f"| {name} | {value} | {target} | {met} |" for name, value, target, met in rows]
    out += ["", f"Load: `wrk -t1 -c{connections} -d{seconds:g}s --latency URL/readyz`, each server warmed up by a 2 s run "
            "first; the agent and bare rounds alternate. Medians above; every round below (\"other CPU\" is CPU time "
            "the rest of the machine used meanwhile, out of "
            "2 CPU-seconds per second of load on 2 cores: noise).", "",
            "| server | round | req/s | p50 | p99 | max | requests | non-2xx | socket errors | CPU/request | other CPU |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lights = [("agent, default", f.light["agent"]), ("bare aiohttp", f.light["bare"]), (f"agent, {n} checks", f.light["checks"])]
    for name, rounds in (("agent, default", f.agent), ("bare aiohttp", f.bare), (f"agent, {n} checks", f.checks),
                         *((f"{name}, 1 connection", [r]) for name, r in lights)):
        out += [f"| {name} | {i + 1} | {r.load.rps:,.0f} | {r.load.p50_ms:.2f} ms | {r.load.p99_ms:.2f} ms | "
                f"{r.load.max_ms:.2f} ms | {r.load.requests:,} | {r.load.non_2xx:,} | {r.load.socket_errors} | "
                f"{r.cpu_us_per_request:.1f} µs | {r.other_cpu_s:.1f} s |" for i, r in enumerate(rounds)]
    out += ["", f"{n}-check agent: check states before the load {f.states_before}, after {f.states_after}; check runs "
            f"during the load {f.check_runs_per_s:.1f}/s (schedule {EXPECTED_RUNS_PER_S:.1f}/s); the hanging helper "
            f"accepted {f.hang_accepted} connections.",
            "", "Start times (s), agent: " + ", ".join(f"{s:.3f}" for s in f.start_agent) + ".",
            "", "Start times (s), bare: " + ", ".join(f"{s:.3f}" for s in f.start_bare) + "."]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each wrk round (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="wrk rounds each for the agent and bare (default 5)")
    parser.add_argument("--check-rounds", type=int, default=3, help="wrk rounds for the 200-check agent (default 3)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--starts", type=int, default=10, help="start-time samples each (default 10)")
    parser.add_argument("--light-seconds", type=float, default=5.0, help="length of the one-connection round (default 5)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench_probes: wrk is not on PATH", file=sys.stderr)
        return 2
    began, idle_check = time.monotonic(), psutil.cpu_percent(interval=1.0)
    if idle_check > 10:
        log(f"warning: the machine is {idle_check:.0f}% busy before the benchmark starts; figures will be noisy")
    figures = run(args.seconds, args.rounds, args.check_rounds, args.connections, args.starts, args.light_seconds)
    print(f"Probe server benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}; code {code_state()}; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
          f"wrk on {HOST}; machine {idle_check:.0f}% busy just before the run.\n")
    print(table(figures, args.seconds, args.connections))
    log(f"done in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
