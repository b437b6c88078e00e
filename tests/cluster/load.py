"""Bounded HTTP load through a Service for the rollout scenario: one client opens a new connection per request,
another keeps a pool of keep-alive connections; neither retries a request that failed."""

from __future__ import annotations

import http.client
import select
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Tally:
    """What a client saw: successes, failures (with their first few reasons), and the pods that answered."""

    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    pods: set[str] = field(default_factory=set)

    def fail(self, reason: str) -> None:
        """Counts a failed request."""
        self.failed += 1
        if len(self.errors) < 10:
            self.errors.append(reason)


def _one(conn: http.client.HTTPConnection, tally: Tally) -> bool:
    """One GET on a connection; True if it succeeded (200), the connection then reusable."""
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        tally.fail(f"{type(exc).__name__}: {exc}")
        return False
    if resp.status != 200:
        tally.fail(f"status {resp.status}")
        return False
    tally.ok += 1
    tally.pods.add(body)
    return not resp.will_close


def _dropped(conn: http.client.HTTPConnection) -> bool:
    # As a pool does (urllib3's is_connection_dropped): an idle connection the server closed is readable (EOF)
    # and is replaced before a request is sent on it; no request is ever sent twice.
    sock = conn.sock
    return sock is None or bool(select.select([sock], [], [], 0)[0])


class Load:
    """Both clients in threads against host:port, at most `limit` seconds, until stop()."""

    def __init__(self, host: str, port: int, *, pool_size: int = 4, pause: float = 0.01, limit: float = 240) -> None:
        self.host, self.port, self.pool_size, self.pause, self.limit = host, port, pool_size, pause, limit
        self.fresh, self.pooled = Tally(), Tally()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._new_connections, daemon=True),
                         threading.Thread(target=self._keep_alive, daemon=True)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stops both clients and waits for them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _running(self, started: float) -> bool:
        return not self._stop.is_set() and time.monotonic() - started < self.limit

    def _new_connections(self) -> None:
        started = time.monotonic()
        while self._running(started):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            _one(conn, self.fresh)
            conn.close()
            time.sleep(self.pause)

    def _keep_alive(self) -> None:
        started = time.monotonic()
        pool = [http.client.HTTPConnection(self.host, self.port, timeout=5) for _ in range(self.pool_size)]
        i = 0
        while self._running(started):
            conn = pool[i % len(pool)]
            if conn.sock is not None and _dropped(conn):
                conn.close()
            if not _one(conn, self.pooled):
                conn.close()
            i += 1
            time.sleep(self.pause / self.pool_size)
        for conn in pool:
            conn.close()
