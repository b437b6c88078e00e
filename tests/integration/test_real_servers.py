"""Real nginx and gunicorn (master and workers) under exec mode's defaults: the stop signal reaches the whole group,
every request the server read is answered in full, and other forwarded signals reach only the master.

Each request carries an id; the server records the ids it read (gunicorn's app as it reads one, nginx's access log
as it ends one). A request the server read and did not answer in full fails the test, whether it was cut mid-answer
or dropped before its first byte; a connection closed unanswered whose id the server never read was still in the
listen queue when the server stopped, which is allowed."""

from __future__ import annotations

import itertools
import pathlib
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psutil

from agent.testing import AgentProcess, run_agent
from tests.servers import free_port, until, wait_port

GUNICORN = str(pathlib.Path(sys.executable).parent / "gunicorn")


@dataclass
class Load:
    """Clients that each send one request after another on new connections, and sort what happened to them."""

    port: int
    read_by_server: Callable[[], set[int]]  # the ids of the requests the server read
    clients: int = 6
    outcomes: Counter[str] = field(default_factory=Counter)
    by_id: dict[int, str] = field(default_factory=dict)  # each request's outcome, by the id it carried
    spans: list[tuple[float, float]] = field(default_factory=list)  # start and end of each complete answer
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)

    def unanswered(self) -> dict[int, str]:
        """The requests the server read and did not answer in full, with what the client saw."""
        return {i: self.by_id.get(i, "never ended") for i in sorted(self.read_by_server())
                if self.by_id.get(i) != "answered"}

    def _client(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            with self._lock:
                request_id = next(self._ids)
            outcome = self._one(request_id)
            with self._lock:
                self.by_id[request_id] = outcome
                self.outcomes[outcome] += 1
                if outcome == "answered":
                    self.spans.append((began, time.monotonic()))
            if outcome != "answered":
                time.sleep(0.05)

    def _one(self, request_id: int) -> str:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        except ConnectionRefusedError:
            return "refused"
        except OSError:
            return "not connected"
        received = b""
        try:
            with sock:
                sock.sendall(f"GET /big?id={request_id} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
                while chunk := sock.recv(65536):
                    received += chunk
        except OSError:
            pass
        if not received:
            return "closed unanswered"  # allowed only if the server never read it (still in the listen queue)
        head, _, body = received.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), -1)
        return "answered" if head.startswith(b"HTTP/1.1 200") and len(body) == length else "cut mid-flight"

    def in_flight_at(self, moment: float) -> int:
        return sum(1 for began, ended in self.spans if began < moment < ended)


def signalled_at(agent: AgentProcess, signame: str) -> float:
    """Wait for the agent's "sent SIGNAL" line; the monotonic time it was seen (just after it was sent)."""
    agent.wait_for(lambda: any(m.startswith(f"sent {signame} to ") for m in agent.messages()), timeout=30, interval=0.01)
    return time.monotonic()


def stop_under_load(agent: AgentProcess, port: int, signame: str, read_by_server: Callable[[], set[int]]) -> Load:
    load = Load(port, read_by_server)
    load.start()
    until(lambda: len(load.spans) >= 3)  # answers flow before the stop
    agent.signal(signal.SIGTERM)
    signalled = signalled_at(agent, signame)
    code = agent.wait_exit(timeout=60)
    load.finish()
    assert code == 0, agent.logs()[-20:]
    assert load.outcomes["cut mid-flight"] == 0, load.outcomes
    assert load.read_by_server(), "the server recorded no request: the record is broken"
    assert load.unanswered() == {}, (load.outcomes, "read by the server, not answered in full")
    # Requests being answered when the stop signal came were all answered in full.
    assert load.in_flight_at(signalled) >= 1, (load.outcomes, load.spans[-5:], signalled)
    assert not any("SIGKILL" in m for m in agent.messages())
    return load


def ids_in(log: pathlib.Path) -> set[int]:
    """The request ids a server wrote to LOG, one a line."""
    return {int(line) for line in log.read_text().split()} if log.exists() else set()


def workers_of(master: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(master).children() if p.status() != psutil.STATUS_ZOMBIE]


def test_nginx_stops_gracefully_with_sigquit_to_its_group(tmp_path: pathlib.Path) -> None:
    port = free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "big").write_bytes(b"x" * 150_000)
    (tmp_path / "nginx.conf").write_text(f"""
daemon off;
user root;
worker_processes 2;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 256; }}
http {{
    log_format ids '$arg_id';
    access_log {tmp_path}/ids.log ids;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {tmp_path}/www;
        location / {{ limit_rate 100k; }}
    }}
}}
""")
    config = "shutdown: {drain_delay: 300ms, stop_signal: SIGQUIT, stop_timeout: 30s, grace_period: 60s}\n"
    command = ["--", "nginx", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)]
    with run_agent(config, args=("exec",), extra_args=command) as agent:
        wait_port(port)
        master = psutil.Process(agent.proc.pid).children()[0].pid
        until(lambda: len(workers_of(master)) == 2)
        stop_under_load(agent, port, "SIGQUIT", lambda: ids_in(tmp_path / "ids.log"))
        said = agent.messages()
        assert any(m.startswith(f"sent SIGQUIT to the app's process group {master} (3 processes)") for m in said), said
    assert not psutil.pid_exists(master)


WSGI = '''
import os
import time
from urllib.parse import parse_qs

READ = os.open(os.path.join(os.path.dirname(__file__), "ids.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def app(environ, start_response):
    os.write(READ, parse_qs(environ["QUERY_STRING"])["id"][0].encode() + b"\\n")  # read: it must be answered
    time.sleep(0.8)
    body = b"y" * 100_000
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def gunicorn(tmp_path: pathlib.Path, port: int) -> list[str]:
    (tmp_path / "slowapp.py").write_text(WSGI)
    return ["--", GUNICORN, "--workers", "2", "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path),
            "--graceful-timeout", "20", "--log-level", "warning", "slowapp:app"]


def test_gunicorn_stops_gracefully_with_sigterm_to_its_group(tmp_path: pathlib.Path) -> None:
    port = free_port()
    config = "shutdown: {drain_delay: 300ms, stop_timeout: 30s, grace_period: 60s}\n"
    with run_agent(config, args=("exec",), extra_args=gunicorn(tmp_path, port)) as agent:
        wait_port(port)
        master = psutil.Process(agent.proc.pid).children()[0].pid
        until(lambda: len(workers_of(master)) == 2)
        stop_under_load(agent, port, "SIGTERM", lambda: ids_in(tmp_path / "ids.log"))
        assert any(m.startswith(f"sent SIGTERM to the app's process group {master} (3 processes)")
                   for m in agent.messages())
    assert not psutil.pid_exists(master)


def test_gunicorn_ttin_and_usr2_reach_only_the_master(tmp_path: pathlib.Path) -> None:
    port = free_port()
    config = "shutdown: {drain_delay: 100ms, stop_timeout: 30s, grace_period: 60s}\n"
    with run_agent(config, args=("exec",), extra_args=gunicorn(tmp_path, port)) as agent:
        wait_port(port)
        master = psutil.Process(agent.proc.pid).children()[0].pid
        until(lambda: len(workers_of(master)) == 2)
        first = {p.pid for p in workers_of(master)}
        # TTIN: one more worker. Sent to the workers too, it would stop them (they reset it to its default).
        agent.signal(signal.SIGTTIN)
        until(lambda: len(workers_of(master)) == 3)
        assert all(psutil.Process(pid).status() != psutil.STATUS_STOPPED for pid in first)
        # USR2: the master starts a new master beside itself. Sent to the workers, it would kill every one.
        agent.signal(signal.SIGUSR2)
        until(lambda: any(p.children() for p in workers_of(master) if p.pid not in first))  # it has workers
        for pid in first:
            assert psutil.Process(pid).status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
        assert agent.status()["phase"] == "running"
        wait_port(port, timeout=2)  # still serving
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit(timeout=60) == 0
        assert not any("SIGKILL" in m for m in agent.messages()), agent.messages()
    assert not psutil.pid_exists(master)
    for pid in first:
        assert not psutil.pid_exists(pid)
