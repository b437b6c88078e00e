"""`sidecar-agent wait`: poll the agent's readiness until it passes or time runs out (standard library only)."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from agent.probes import Probe

POLL = 0.25


def fetch(url: str, timeout: float = 1.0) -> tuple[int | None, str]:
    """(status, body) of a GET, or (None, why) when the agent did not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the user's own agent URL
            return response.status, response.read(10240).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(10240).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"agent not reachable at {url}: {getattr(reason, 'strerror', None) or reason}"


def readiness_url(url: str) -> str:
    """`url` itself, or the agent's readiness endpoint when `url` names only the agent (no path, or `/`)."""
    parts = urllib.parse.urlsplit(url)
    if parts.path not in ("", "/"):
        return url
    return urllib.parse.urlunsplit(parts._replace(path=f"/{Probe.READINESS.path}"))


def wait_ready(url: str, timeout: float, *, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> tuple[bool, str]:
    """(True, "ready") once `url` answers 200, or (False, what still fails) after `timeout` seconds.

    A `url` without a path (`http://127.0.0.1:8686`) means that agent's readiness endpoint.
    """
    url = readiness_url(url)
    verbose = url + ("&" if "?" in url else "?") + "verbose"
    deadline = clock() + timeout
    while True:
        status, body = fetch(verbose)
        if status == 200:
            return True, f"ready: {url}"
        if clock() >= deadline:
            break
        sleep(min(POLL, max(0.0, deadline - clock())))
    if status is None:
        return False, f"not ready after {timeout:g}s: {body}"
    failing = [line for line in body.splitlines() if line.startswith("[-]")] or body.splitlines()[:5]
    return False, f"not ready after {timeout:g}s (HTTP {status}); still failing:\n" + "\n".join(failing)
