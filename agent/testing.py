"""Helpers for testing the agent and code around it: a fake clock and a real agent process on a free port."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

_SERVING = re.compile(r"serving probes on (\S+):(\d+)")


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class AgentProcess:
    """A running `sidecar-agent` child: its process, bound port and the log lines it printed so far."""

    proc: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _ended: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, *, method: str = "GET", headers: Mapping[str, str] | None = None,
            timeout: float = 5.0) -> tuple[int, str]:
        """(status, body) of a request to the agent; HTTP errors are answers too."""
        return http_request(self.url + path, method=method, headers=headers, timeout=timeout)

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def logs(self) -> list[str]:
        """Every line printed so far (stdout and stderr together)."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return self.lines
            if line is None:
                self._ended = True
            else:
                self.lines.append(line)

    def log_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs() if line.startswith("{")]

    def messages(self) -> list[str]:
        """The message of every JSON log line so far."""
        return [r["message"] for r in self.log_records()]

    def wait_for(self, predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
        """Poll `predicate()` until it returns something truthy; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; agent log:\n" + "\n".join(self.logs()[-30:]))
            time.sleep(interval)

    def wait_status(self, path: str, code: int, contains: str = "", timeout: float = 15.0) -> str:
        """Wait until `path` answers `code` with a body containing `contains`; return the body."""
        def answered() -> str | None:
            got, body = self.get(path)
            return body if got == code and contains in body else None
        result: str = self.wait_for(answered, timeout)
        return result

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop_fast(self, timeout: float = 15.0) -> int:
        """SIGTERM, then (once it was taken) SIGINT to skip the drain and stop waits; the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and self.proc.poll() is None:
                if any("received SIGTERM" in line for line in self.logs()):
                    break
                time.sleep(0.01)
            if self.proc.poll() is None:
                self.signal(signal.SIGINT)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = 15.0) -> int:
        """The exit code, once the process ended and its output was read to the end."""
        code = self.proc.wait(timeout)
        # The pipe is read by a thread: the last lines can arrive after the exit status. A child that
        # inherited the pipe can hold it open, so the wait for its end is bounded.
        deadline = time.monotonic() + 5.0
        while True:
            self.logs()
            if self._ended or time.monotonic() > deadline:
                return code
            time.sleep(0.01)


def http_request(url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None,
                 data: bytes | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of one HTTP request with the standard library."""
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}), data=data)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback test URLs
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextmanager
def run_agent(config: str | None = None, *, args: Sequence[str] = ("run",), env: Mapping[str, str] | None = None,
              extra_args: Sequence[str] = (), listen: str = "127.0.0.1:0", prefix: Sequence[str] = (),
              start_timeout: float = 20.0) -> Iterator[AgentProcess]:
    """Start `python -m agent` with `config` (YAML text) on a free port; stop it (SIGKILL if need be) after.

    `extra_args` come last (for exec mode: `["--", CMD, ...]`); `prefix` runs the agent under another
    command (such as setpriv).
    """
    with tempfile.TemporaryDirectory() as folder:
        command = [*prefix, sys.executable, "-m", "agent", *args]
        if config is not None:
            path = os.path.join(folder, "agent.yaml")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(config)
            command += ["--config", path]
        command += ["--listen", listen, *extra_args]
        child_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env)
        agent = AgentProcess(proc, 0)
        reader = threading.Thread(target=_pump, args=(proc, agent._queue), daemon=True)
        reader.start()
        try:
            agent.port = _wait_port(agent, start_timeout)
            yield agent
        finally:
            try:
                agent.stop_fast()
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(5)
            if proc.stdout is not None:
                proc.stdout.close()
            agent.logs()


def _pump(proc: subprocess.Popen[str], out: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.put(line.rstrip("\n"))
    out.put(None)


def _wait_port(agent: AgentProcess, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in agent.logs():
            match = _SERVING.search(line)
            if match:
                return int(match.group(2))
        if agent.proc.poll() is not None:
            agent.logs()
            raise AssertionError(f"agent exited with {agent.proc.returncode}:\n" + "\n".join(agent.lines))
        time.sleep(0.02)
    raise AssertionError("agent did not start serving:\n" + "\n".join(agent.logs()))
