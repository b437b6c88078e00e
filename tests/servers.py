"""Throwaway servers on free loopback ports: HTTP targets, and Redis and PostgreSQL for tests that kill, pause or
restart them."""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from agent.units import format_address


def own_address() -> str:
    """An IPv4 address of this machine that is not loopback: admin calls from it are not from loopback.

    A machine without one fails the test that needs it, with the reason: the check never silently disappears.
    """
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    pytest.fail("this machine has no non-loopback IPv4 address to send admin calls from")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on `host` just now (a DNS server needs both; the others use TCP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise AssertionError("no port free for both UDP and TCP")


@dataclass
class Certs:
    """Self-signed certificates (each its own CA) made with openssl in `folder`."""

    folder: Path

    def make(self, name: str, dns_name: str = "", ip: str = "") -> tuple[Path, Path]:
        """A certificate for `dns_name` and/or `ip` only: its (key, cert) PEM files."""
        key, cert = self.folder / f"{name}.key", self.folder / f"{name}.pem"
        names = ",".join(([f"DNS:{dns_name}"] if dns_name else []) + ([f"IP:{ip}"] if ip else []))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={dns_name or ip}",
                        "-addext", f"subjectAltName={names}"], check=True, capture_output=True, timeout=60)
        return key, cert


def free_port_below_ephemeral() -> int:
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range, which no client connection takes as its
    source port: a client that connects again and again while nothing listens cannot meet itself (TCP self-connect)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
        low = int(handle.read().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 10000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port below {low}")


def listening_socket(host: str, backlog: int = 16) -> socket.socket:
    """A TCP socket listening on a free port of HOST: an IPv4 or IPv6 address, or "::" for both families."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    if host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, 0))
    sock.listen(backlog)
    return sock


class Target(ThreadingHTTPServer):
    """A real HTTP server whose answer a test can change."""

    daemon_threads = True
    status = 200
    body = b"ok"
    delay = 0.0

    @property
    def url(self) -> str:
        return f"http://{format_address(str(self.server_address[0]), int(self.server_address[1]))}"


class _Handler(BaseHTTPRequestHandler):
    server: Target

    def do_GET(self) -> None:
        if self.server.delay:
            time.sleep(self.server.delay)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a check timed out and hung up first
            self.send_response(self.server.status)
            self.send_header("Content-Length", str(len(self.server.body)))
            self.end_headers()
            self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving_http(host: str = "127.0.0.1") -> Iterator[Target]:
    """A Target on a free port of HOST (see listening_socket), served by a thread until the block ends."""
    server = Target((host, 0), _Handler, bind_and_activate=False)
    server.socket.close()  # made for IPv4 only: the listening socket below takes its place
    server.socket = listening_socket(host, backlog=128)
    server.server_address = server.socket.getsockname()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def accepting_port() -> Iterator[int]:
    """A loopback TCP port that accepts every connection and closes it (a listener that never accepts fills its
    backlog at 50 connections a second, and then connections time out)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(512)
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def until(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    """Poll `predicate` until it is true; fail after `timeout` seconds (generous: a bound, not a measure)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class RedisServer:
    port: int
    password: str | None
    tls: tuple[str, str] | None = None  # (key, cert) PEM files: TLS only, on `port`
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-key-file", self.tls[0],
                     "--tls-cert-file", self.tls[1], "--tls-auth-clients", "no"]
        command = ["redis-server", *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            command += ["--requirepass", self.password]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def cli(self, *args: str) -> str:
        command = ["redis-cli", "-p", str(self.port), "--no-auth-warning"]
        if self.password:
            command += ["-a", self.password]
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=10, check=True).stdout

    def connections_received(self) -> int:
        line = next(ln for ln in self.cli("info", "stats").splitlines() if ln.startswith("total_connections_received"))
        return int(line.split(":")[1])


@contextmanager
def redis_server(password: str | None = None, tls: tuple[str, str] | None = None) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), password, tls)
    server.start()
    try:
        yield server
    finally:
        server.resume() if server.proc and server.proc.poll() is None else None
        server.kill()


@dataclass
class PostgresCluster:
    """A cluster made with initdb in a temporary folder, run as the postgres user (initdb refuses root)."""

    folder: str
    port: int
    tls: tuple[Path, Path] | None = None  # (key, cert) PEM files: the server also accepts TLS

    @property
    def data(self) -> str:
        return os.path.join(self.folder, "data")

    def _as_postgres(self, *command: str) -> subprocess.CompletedProcess[str]:
        user = pwd.getpwnam("postgres")
        return subprocess.run(list(command), capture_output=True, text=True, timeout=60, check=True,
                              user=user.pw_uid, group=user.pw_gid, cwd=self.folder)

    def init(self) -> None:
        self._as_postgres(_pg("initdb"), "-D", self.data, "-U", "postgres", "--auth-local=trust",
                          "--auth-host=scram-sha-256", "--no-sync")
        if self.tls:  # the server reads them from its data folder, and only a key no one else can read
            for source, name in zip(self.tls, ("server.key", "server.crt"), strict=True):
                target = os.path.join(self.data, name)
                shutil.copyfile(source, target)
                os.chmod(target, 0o600)
                shutil.chown(target, "postgres", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        if self.tls:
            options += " -c ssl=on -c ssl_key_file=server.key -c ssl_cert_file=server.crt"
        self._as_postgres(_pg("pg_ctl"), "-D", self.data, "-o", options, "-l", os.path.join(self.folder, "log"),
                          "-w", "start")

    def stop_immediately(self) -> None:
        self._as_postgres(_pg("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")

    def processes(self) -> list[psutil.Process]:
        with open(os.path.join(self.data, "postmaster.pid")) as handle:
            postmaster = psutil.Process(int(handle.readline()))
        return [postmaster, *postmaster.children(recursive=True)]

    def psql(self, sql: str) -> str:
        return self._as_postgres("psql", "-h", self.folder, "-p", str(self.port), "-U", "postgres", "-tAc", sql).stdout


def newest_postgresql() -> str:
    """The newest of Debian's installed PostgreSQL versions (by number: 15 is newer than 9.6); the test fails with
    the reason when there is none."""
    versions = os.listdir("/usr/lib/postgresql") if os.path.isdir("/usr/lib/postgresql") else []
    if not versions:
        pytest.fail("Debian's PostgreSQL is not installed (tools/test.py installs it)")
    return max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))


def _pg(tool: str) -> str:
    return shutil.which(tool) or f"/usr/lib/postgresql/{newest_postgresql()}/bin/{tool}"


@contextmanager
def postgres_cluster(tls: tuple[Path, Path] | None = None) -> Iterator[PostgresCluster]:
    folder = tempfile.mkdtemp(prefix="agent-pg-")
    os.chmod(folder, 0o755)
    shutil.chown(folder, "postgres", "postgres")
    cluster = PostgresCluster(folder, free_port(), tls)
    try:
        cluster.init()
        cluster.start()
        cluster.psql("CREATE ROLE checker LOGIN PASSWORD 'right-pass'")
        yield cluster
    finally:
        for process in _quiet_processes(cluster):
            process.send_signal(signal.SIGCONT)
        with suppress(subprocess.CalledProcessError):
            cluster.stop_immediately()
        shutil.rmtree(folder, ignore_errors=True)


def _quiet_processes(cluster: PostgresCluster) -> list[psutil.Process]:
    try:
        return cluster.processes()
    except (OSError, psutil.Error, ValueError):
        return []
