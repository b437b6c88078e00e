"""Real DNS servers on loopback for the dns check's tests: dnsmasq, a scripted UDP responder, a silent socket.

Nothing here sends a packet off this machine: dnsmasq runs with no upstream servers (`--no-resolv`),
so a name it does not know is answered locally (NXDOMAIN or REFUSED), and the system-resolver tests
run the agent in a private mount namespace whose /etc/hosts and /etc/resolv.conf point at them.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from tests import children
from tests.servers import free_port

DNSMASQ_HINT = "dnsmasq is not installed (Debian: apt-get install dnsmasq-base; tools/test.py installs it)"


def dnsmasq_path() -> str:
    """The dnsmasq binary; a test that needs it fails when it is missing (tools/test.py installs it), never skips."""
    path = shutil.which("dnsmasq") or next((p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None)
    if path is None:
        pytest.fail(DNSMASQ_HINT)
    return path


def ask(host: str, port: int, name: str, qtype: int = 1, timeout: float = 0.5) -> bytes | None:
    """One raw UDP query (a test's own, independent of the check's client); the reply, or None."""
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    query = struct.pack("!HHHHHH", random.getrandbits(16), 0x0100, 1, 0, 0, 0) + wire + struct.pack("!HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query, (host, port))
            return sock.recv(65535)
        except OSError:
            return None


@dataclass
class Dnsmasq:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    hosts_file: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def reload(self) -> None:
        """SIGHUP: dnsmasq clears its cache and reads its --addn-hosts files again."""
        self.proc.send_signal(signal.SIGHUP)


@contextmanager
def dnsmasq(*options: str, host: str | None = "127.0.0.1", port: int | None = None,
            hosts: str | None = None) -> Iterator[Dnsmasq]:
    """dnsmasq in the foreground on host:port, answering only from `options` and `hosts`.

    A free port when `port` is None; a random loopback address (127.x.y.z) when `host` is None, so that a
    fixed port like 53 is free. `hosts` is the text of an --addn-hosts file (rewrite `hosts_file` and
    call reload() to change answers). The process is stopped by its pid when the block ends.
    """
    binary = dnsmasq_path()
    with tempfile.TemporaryDirectory(prefix="dnsmasq-") as folder:
        hosts_file = os.path.join(folder, "hosts")
        with open(hosts_file, "w", encoding="utf-8") as handle:
            handle.write(hosts or "")
        errors = []
        for _ in range(5):  # the address can be taken between our choice and dnsmasq's bind: choose again
            chosen_host = host or f"127.{random.randint(100, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
            chosen_port = port or free_port(chosen_host)
            command = [
                binary, "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null", "--pid-file=",
                "--user=root", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts_file}", "--no-negcache",
                f"--port={chosen_port}", f"--listen-address={chosen_host}", "--bind-interfaces", *options,
            ]
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                server = Dnsmasq(proc, chosen_host, chosen_port, hosts_file)
                if _wait_answering(server):
                    yield server
                    return
            finally:
                errors.append(_stop(proc))
            if host is not None and port is not None:
                break
        raise AssertionError("dnsmasq did not start:\n" + "\n".join(errors))


def _wait_answering(server: Dnsmasq, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        if ask(server.host, server.port, "probe.invalid", timeout=0.2) is not None:
            return True
        time.sleep(0.02)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> str:
    """Stop one process by its pid: SIGTERM, then SIGKILL; its stderr."""
    children.stop(proc, 5)
    if proc.stderr is None:
        return ""
    with proc.stderr:
        return proc.stderr.read().decode(errors="replace")


@dataclass
class Responder:
    """A UDP DNS 'server' on loopback whose replies a test scripts: `reply(query) -> datagrams to send back`."""

    reply: Callable[[bytes], Sequence[bytes]]
    sock: socket.socket = field(default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    queries: list[bytes] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def serve(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.queries.append(data)
            for datagram in self.reply(data):
                self.sock.sendto(datagram, peer)


@contextmanager
def responder(reply: Callable[[bytes], Sequence[bytes]]) -> Iterator[Responder]:
    server = Responder(reply)
    server.sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        thread.join(5)
        server.sock.close()


@contextmanager
def silent_udp() -> Iterator[int]:
    """A UDP port that is bound (so no ICMP unreachable comes back) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def private_mounts_work() -> bool:
    """Whether this machine lets us run a command with its own /etc/hosts (root and unshare with mount namespaces)."""
    if shutil.which("unshare") is None:
        return False
    with tempfile.NamedTemporaryFile("w", suffix=".hosts") as handle:
        handle.write("127.0.0.1 localhost\n")
        handle.flush()
        try:
            done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                   'mount --bind "$0" /etc/hosts', handle.name],
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0


def require_private_mounts() -> None:
    if not private_mounts_work():
        pytest.fail("cannot bind-mount over /etc/hosts in a private mount namespace here (needs root and unshare)")


@contextmanager
def private_resolver(hosts: str, nameserver: str) -> Iterator[list[str]]:
    """A command prefix that runs a program with its own /etc/hosts and /etc/resolv.conf (a private mount namespace).

    The files are bind-mounted over the system's only inside the new namespace; the system's own are untouched.
    """
    require_private_mounts()
    with tempfile.TemporaryDirectory(prefix="resolver-") as folder:
        hosts_file, resolv_file = os.path.join(folder, "hosts"), os.path.join(folder, "resolv.conf")
        with open(hosts_file, "w", encoding="utf-8") as handle:
            handle.write(hosts)
        with open(resolv_file, "w", encoding="utf-8") as handle:
            # This server only: a search domain taken from the host name is asked of it too, and answered NXDOMAIN.
            handle.write(f"nameserver {nameserver}\noptions timeout:1 attempts:2\n")
        script = 'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
        yield ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, hosts_file, resolv_file]
