"""A pod's deletion, simulated on 127.0.0.1 the way Kubernetes runs it, with or without the agent's ordering.

The pieces, all threads of this process or child processes it starts (and stops, by pid):

- the app: tests/e2e/web_app.py, a threaded HTTP server that on SIGTERM stops accepting, finishes what is in
  flight and exits 0 (as typical apps do);
- the agent (with the agent): `python -m agent run`, watching the app by a unique marker in its command line,
  with a process check (liveness) and an http check of the app (readiness, startup), an admin token, and a
  `drain_delay` of readiness period x failure threshold + endpoint lag + a margin;
- `ProbeWorker`: the kubelet's probe worker (a GET every period, 1 s timeout, success on 200-399, thresholds
  counted as in the kubelet's prober). The readiness worker runs until the end, through the termination; the
  liveness worker stops at the deletion, as the kubelet does. With the agent they probe the agent's `/readyz`
  and `/livez`; without it, the app's own `/healthz`;
- `Service`: the set of ready endpoints the clients route by. It learns of each readiness change `lag`
  seconds late, as the endpoints controller and kube-proxy do;
- `Clients`: a few threads sending `GET /` through the Service, a new connection per request, for the whole
  run. A failure is a refused, reset or timed-out connection or a non-2xx answer from a pod the Service still
  routed to; when the Service routes nowhere the request is counted as `unrouted` (in a real Deployment it would
  go to another replica);
- the deletion at t=0. With the agent: SIGTERM to the agent (a regular sidecar container) and, in parallel, the
  app container's preStop hook (`GET /prestop` with the bearer token); when the hook returns, SIGTERM to the app
  (if it still runs), as the kubelet does after a preStop hook. Without the agent: SIGTERM straight to the app,
  while the Service still routes to it for the lag.

`run_scenario()` runs one deletion and returns an `Outcome`; tests/e2e/test_rollout.py asserts on it and
bench/bench_shutdown.py reports it.
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agent.testing import AgentProcess, run_agent

HOST = "127.0.0.1"
WEB_APP = Path(__file__).resolve().with_name("web_app.py")
TOKEN_ENV = "E2E_AGENT_TOKEN"
PROBE_USER_AGENT = "kube-probe/1.33"
NETWORK_ERRORS = (OSError, http.client.HTTPException)  # refused, reset, timed out, a broken answer


@dataclass(frozen=True)
class Timing:
    """The simulated pod spec and cluster: probe settings, endpoint lag, load; seconds."""

    readiness_period: float = 0.2
    failure_threshold: int = 2
    success_threshold: int = 1
    liveness_period: float = 0.2
    probe_timeout: float = 1.0  # the kubelet's default timeoutSeconds
    endpoint_lag: float = 0.5  # endpoints controller + kube-proxy
    margin: float = 1.0  # slack in drain_delay for a loaded machine
    clients: int = 4
    client_pause: float = 0.005  # between one client's requests
    client_timeout: float = 2.0
    warmup: float = 1.0  # traffic flowing through the Service before the deletion
    tail: float = 0.5  # traffic after the Service dropped the pod and everything exited
    stop_timeout: float = 5.0
    grace_period: float = 30.0  # terminationGracePeriodSeconds: bounds the preStop hook

    @property
    def drain_delay(self) -> float:
        """Covers the readiness probe's period x failureThreshold plus the endpoint lag, with a margin."""
        return round(self.readiness_period * self.failure_threshold + self.endpoint_lag + self.margin, 3)


def http_get(port: int, path: str, *, timeout: float, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body) of one GET to 127.0.0.1:port on a new connection; network errors are raised."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(10 * 1024).decode(errors="replace")
    finally:
        conn.close()


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- the app ---------------------------------------------------------------------------------------------------

@dataclass
class WebApp:
    """The app process: its port, the marker in its command line, and the events it logged (CLOCK_MONOTONIC)."""

    proc: subprocess.Popen[bytes]
    port: int
    marker: str
    log: Path

    def events(self) -> list[tuple[str, float]]:
        if not self.log.exists():
            return []
        rows = [line.split() for line in self.log.read_text().splitlines()]
        return [(row[0], float(row[1])) for row in rows if len(row) == 2]

    def when(self, name: str) -> float | None:
        return next((at for event, at in self.events() if event == name), None)


@contextmanager
def start_web_app(folder: Path, timeout: float = 20.0, sick_file: Path | None = None) -> Iterator[WebApp]:
    """Start tests/e2e/web_app.py on a free port; kill it (by pid) afterwards if it still runs."""
    marker = f"e2e-web-app-{os.getpid()}-{os.urandom(4).hex()}"
    log, port_file = folder / f"{marker}.log", folder / f"{marker}.port"
    sick = ["--sick-file", str(sick_file)] if sick_file is not None else []
    proc = subprocess.Popen([sys.executable, str(WEB_APP), "--log", str(log), "--port-file", str(port_file), *sick, marker])
    try:
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the app exited with {proc.returncode} before serving")
            if time.monotonic() > deadline:
                raise AssertionError("the app did not start serving")
            time.sleep(0.01)
        yield WebApp(proc, int(port_file.read_text()), marker, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def agent_config(app: WebApp, timing: Timing) -> str:
    ms = round(timing.drain_delay * 1000)
    return ("log: {level: info, format: json}\n"
            f"admin: {{token_env: {TOKEN_ENV}}}\n"
            f"app: {{match: {{cmdline: '{app.marker}'}}}}\n"
            "checks:\n"
            "  app-process: {type: process, interval: 200ms, probes: [liveness]}\n"
            f"  app-http: {{type: http, url: 'http://{HOST}:{app.port}/healthz', interval: 200ms, timeout: 1s,"
            " failure_threshold: 2, probes: [readiness, startup]}\n"
            f"shutdown: {{drain_delay: {ms}ms, stop_timeout: {timing.stop_timeout}s, grace_period: {timing.grace_period}s}}\n")


# --- the kubelet's probe workers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeRecord:
    at: float  # monotonic, when the answer (or the error) came
    status: int | None  # None: no answer (refused, reset, timed out)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 400


class ProbeWorker:
    """One kubelet probe worker: a GET every `period`; the result flips only after a threshold of identical results.

    Like the kubelet's prober, a readiness worker starts as failing and a liveness worker as passing;
    `on_change(passing)` is called on each flip.
    """

    def __init__(self, name: str, port: int, path: str, *, period: float, timeout: float, success_threshold: int,
                 failure_threshold: int, initial: bool, on_change: Callable[[bool], None] = lambda passing: None) -> None:
        self.name, self.port, self.path, self.period, self.timeout = name, port, path, period, timeout
        self.success_threshold, self.failure_threshold = success_threshold, failure_threshold
        self.passing, self.on_change = initial, on_change
        self.history: list[ProbeRecord] = []
        self._last: bool | None = None
        self._run = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"probe-{name}", daemon=True)

    def start(self) -> ProbeWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout + self.period + 5)

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._apply(self._probe())
            next_at += self.period
            now = time.monotonic()
            if next_at < now:  # a slow probe: the ticker drops the missed ticks
                next_at = now + self.period - (now - next_at) % self.period
            self._stop.wait(next_at - now)

    def _probe(self) -> bool:
        try:
            status, _ = http_get(self.port, self.path, timeout=self.timeout, headers={"User-Agent": PROBE_USER_AGENT})
        except NETWORK_ERRORS as exc:
            record = ProbeRecord(time.monotonic(), None, f"{type(exc).__name__}: {exc}")
        else:
            record = ProbeRecord(time.monotonic(), status)
        self.history.append(record)
        return record.ok

    def _apply(self, ok: bool) -> None:
        self._run = self._run + 1 if ok == self._last else 1
        self._last = ok
        if self._run < (self.success_threshold if ok else self.failure_threshold) or ok == self.passing:
            return
        self.passing = ok
        self.on_change(ok)


# --- the Service -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    pod: str
    port: int


class Service:
    """The ready endpoints, as the proxies know them: each readiness change applies `lag` seconds after it happened."""

    def __init__(self, lag: float) -> None:
        self.lag = lag
        self.changes: list[tuple[float, Endpoint, bool]] = []  # (monotonic, endpoint, ready) as applied
        self._ready: set[Endpoint] = set()
        self._pending: deque[tuple[float, Endpoint, bool]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._propagate, name="endpoints", daemon=True)

    def __enter__(self) -> Service:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5)

    def update(self, endpoint: Endpoint, ready: bool) -> None:
        """A readiness change seen by the kubelet now; the proxies learn of it after the lag."""
        with self._cond:
            self._pending.append((time.monotonic() + self.lag, endpoint, ready))
            self._cond.notify_all()

    def route(self) -> Endpoint | None:
        """Where a new connection goes now; None when the Service has no ready endpoint."""
        with self._cond:
            return random.choice(sorted(self._ready, key=lambda e: e.pod)) if self._ready else None

    def routes_to(self, endpoint: Endpoint) -> bool:
        with self._cond:
            return endpoint in self._ready

    def _propagate(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._pending:
                    self._cond.wait()
                    continue
                due, endpoint, ready = self._pending[0]
                now = time.monotonic()
                if now < due:
                    self._cond.wait(due - now)
                    continue
                self._pending.popleft()
                (self._ready.add if ready else self._ready.discard)(endpoint)
                self.changes.append((now, endpoint, ready))


# --- the clients -----------------------------------------------------------------------------------------------

@dataclass
class Tally:
    succeeded: int = 0
    failed: int = 0
    unrouted: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)  # (monotonic start of the request, what)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Clients:
    """`count` threads sending GET / through the Service, one new connection per request, until stopped."""

    def __init__(self, service: Service, count: int, *, pause: float, timeout: float) -> None:
        self.service, self.pause, self.timeout = service, pause, timeout
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"client-{i}", daemon=True) for i in range(count)]

    def start(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(self.timeout + 5)

    def _loop(self) -> None:
        tally = self.tally
        while not self._stop.is_set():
            endpoint = self.service.route()
            if endpoint is None:
                with tally.lock:
                    tally.unrouted += 1
                self._stop.wait(self.pause * 2)
                continue
            started = time.monotonic()
            failure = ""
            try:
                status, _ = http_get(endpoint.port, "/", timeout=self.timeout)
            except NETWORK_ERRORS as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if not 200 <= status < 300:
                    failure = f"HTTP {status}"
            with tally.lock:
                if failure:
                    tally.failed += 1
                    tally.failures.append((started, failure))
                else:
                    tally.succeeded += 1
            self._stop.wait(self.pause)


# --- one pod deletion ------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one simulated deletion did. Times are monotonic; `at()` turns them into seconds after the deletion."""

    scenario: str  # "agent" or "direct"
    timing: Timing
    deleted: float = 0.0
    succeeded: int = 0
    failed: int = 0
    unrouted: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)  # (seconds after the deletion, what)
    first_not_ready: float | None = None  # the first failed readiness probe after the deletion
    not_ready_answer: str = ""  # what that probe got: "HTTP 503", or the connection error
    endpoint_removed: float | None = None  # the Service stopped routing to the pod
    app_sigterm: float | None = None  # the app's own record of SIGTERM
    app_exit: float | None = None
    app_exit_code: int | None = None
    agent_exit_code: int | None = None
    prestop: tuple[int, str] | None = None  # the preStop hook's answer
    prestop_returned: float | None = None
    kubelet_signalled_app: bool = False  # whether the app still ran when the kubelet sent SIGTERM after preStop
    liveness_failures: int = 0  # failed liveness probes before the deletion
    seconds: float = 0.0  # the whole run, start-up included
    agent_log: list[str] = field(default_factory=list)

    def at(self, moment: float | None) -> float | None:
        return None if moment is None else round(moment - self.deleted, 3)

    def summary(self) -> str:
        return (f"{self.scenario}: {self.failed} failed, {self.succeeded} succeeded, {self.unrouted} unrouted; "
                f"after the deletion: readiness failed at {self.at(self.first_not_ready)}s ({self.not_ready_answer}), "
                f"Service dropped the pod at {self.at(self.endpoint_removed)}s, app SIGTERM at {self.at(self.app_sigterm)}s, "
                f"app exit at {self.at(self.app_exit)}s (code {self.app_exit_code}); agent exit code {self.agent_exit_code}, "
                f"preStop {self.prestop}; run {self.seconds:.1f}s")


def run_scenario(folder: Path, *, with_agent: bool, timing: Timing | None = None) -> Outcome:
    """Start the pod, route traffic to it through the Service, delete it, wait until everything has exited."""
    timing = timing or Timing()
    began = time.monotonic()
    outcome = Outcome("agent" if with_agent else "direct", timing)
    token = os.urandom(12).hex()
    with ExitStack() as stack:
        app = stack.enter_context(start_web_app(folder))
        agent: AgentProcess | None = None
        if with_agent:
            agent = stack.enter_context(run_agent(agent_config(app, timing), env={TOKEN_ENV: token}))
            probe_port, ready_path, live_path = agent.port, "/readyz", "/livez"
        else:
            probe_port, ready_path, live_path = app.port, "/healthz", "/healthz"
        service = stack.enter_context(Service(timing.endpoint_lag))
        endpoint = Endpoint("pod-0", app.port)
        readiness = ProbeWorker("readiness", probe_port, ready_path, period=timing.readiness_period,
                                timeout=timing.probe_timeout, success_threshold=timing.success_threshold,
                                failure_threshold=timing.failure_threshold, initial=False,
                                on_change=lambda ready: service.update(endpoint, ready))
        liveness = ProbeWorker("liveness", probe_port, live_path, period=timing.liveness_period,
                               timeout=timing.probe_timeout, success_threshold=1, failure_threshold=3, initial=True)
        clients = Clients(service, timing.clients, pause=timing.client_pause, timeout=timing.client_timeout)
        stack.callback(readiness.stop)  # the exit stack stops them in the reverse order: clients, liveness, readiness
        stack.callback(liveness.stop)
        stack.callback(clients.stop)
        readiness.start()
        liveness.start()
        clients.start()
        wait_until(lambda: service.routes_to(endpoint) and clients.tally.succeeded >= 20, 30,
                   "the Service to route to the pod and the clients to get answers")
        time.sleep(timing.warmup)

        # The pod is deleted: t=0.
        hook: threading.Thread | None = None
        outcome.deleted = time.monotonic()
        liveness.stop()  # the kubelet stops liveness (and startup) probes of a terminating pod
        if agent is not None:
            def pre_stop_then_sigterm() -> None:
                try:
                    outcome.prestop = http_get(agent.port, "/prestop", timeout=timing.grace_period,
                                               headers={"Authorization": f"Bearer {token}"})
                except NETWORK_ERRORS as exc:
                    outcome.prestop = (0, f"{type(exc).__name__}: {exc}")
                outcome.prestop_returned = time.monotonic()
                outcome.kubelet_signalled_app = app.proc.poll() is None
                app.proc.send_signal(signal.SIGTERM)  # a no-op once the app has exited and been reaped

            hook = threading.Thread(target=pre_stop_then_sigterm, name="prestop-hook", daemon=True)
            hook.start()
            agent.signal(signal.SIGTERM)
        else:
            app.proc.send_signal(signal.SIGTERM)

        # Everything exits; the Service forgets the pod; a little more traffic.
        budget = timing.drain_delay + timing.stop_timeout + 15
        if agent is not None:
            assert hook is not None
            outcome.agent_exit_code = agent.wait_exit(budget)
            hook.join(budget)
        outcome.app_exit_code = app.proc.wait(budget)
        wait_until(lambda: not service.routes_to(endpoint), 15, "the Service to drop the pod")
        time.sleep(timing.tail)
        clients.stop()
        readiness.stop()

        tally = clients.tally
        outcome.succeeded, outcome.failed, outcome.unrouted = tally.succeeded, tally.failed, tally.unrouted
        outcome.failures = [(round(at - outcome.deleted, 3), what) for at, what in tally.failures]
        failed_probe = next((r for r in readiness.history if r.at >= outcome.deleted and not r.ok), None)
        if failed_probe is not None:
            outcome.first_not_ready = failed_probe.at
            outcome.not_ready_answer = f"HTTP {failed_probe.status}" if failed_probe.status else failed_probe.error
        outcome.endpoint_removed = next((at for at, e, ready in service.changes
                                         if e == endpoint and not ready and at >= outcome.deleted), None)
        outcome.app_sigterm, outcome.app_exit = app.when("SIGTERM"), app.when("exit")
        outcome.liveness_failures = sum(1 for r in liveness.history if not r.ok and r.at < outcome.deleted)
        if agent is not None:
            outcome.agent_log = agent.logs()[-40:]
    outcome.seconds = round(time.monotonic() - began, 1)
    return outcome
