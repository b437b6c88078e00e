"""Finds the watched app process through psutil and samples its resources."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from agent.config import AppMatch
from agent.threads import run_internal

log = logging.getLogger("agent.app")


@dataclass(frozen=True)
class AppSample:
    """The app process as last seen; `cmdline` is left out because arguments can hold secrets."""

    pid: int
    create_time: float
    name: str
    status: str
    rss: int
    threads: int
    fds: int
    cpu_seconds: float
    cpu_rate: float | None  # cores used since the previous sample
    at: float  # monotonic

    @property
    def identity(self) -> tuple[int, float]:
        return self.pid, self.create_time


def describe_match(match: AppMatch | None, pid: int | None = None) -> str:
    if pid is not None:
        return f"child pid {pid}"
    if match is None:
        return "no app configured"
    if match.pidfile:
        return f"pidfile {match.pidfile}"
    if match.name:
        return f"name {match.name!r}"
    if match.other_containers:
        return "the pod's other containers"
    return f"cmdline /{match.cmdline}/"


class AppMonitor:
    """Locates the app by `app.match` (or a known child pid), notices restarts, keeps the last sample."""

    def __init__(self, match: AppMatch | None, *, pid: int | None = None,
                 clock: Callable[[], float], on_restart: Callable[[AppSample, AppSample | None], None] | None = None) -> None:
        self.match = match
        self.child_pid = pid
        self._clock = clock
        self._on_restart = on_restart
        self._pattern = re.compile(match.cmdline) if match and match.cmdline else None
        self._process: psutil.Process | None = None
        self._identity: tuple[int, float] | None = None
        self.sample: AppSample | None = None
        self.restarts = 0
        self.error: str | None = None  # why the last lookup found nothing
        self._lock = asyncio.Lock()  # the process check and the sampler must not look up at once

    @property
    def description(self) -> str:
        return describe_match(self.match, self.child_pid)

    @property
    def ever_seen(self) -> bool:
        return self._identity is not None

    async def alive(self) -> bool:
        """Look again: is the app running (found, and neither gone nor a zombie)?"""
        sample = await self.refresh()
        return sample is not None and sample.status != psutil.STATUS_ZOMBIE

    def send(self, signum: int) -> int:
        """Signal the app last seen, unless its pid now belongs to another process; returns the pid.

        Raises ProcessLookupError when the app is gone, PermissionError when the agent may not signal it.
        """
        if self._identity is None:
            raise ProcessLookupError("the app has not been found")
        pid, created = self._identity
        if not self._same_process(pid, created):
            raise ProcessLookupError(f"pid {pid} has exited")
        os.kill(pid, signum)
        return pid

    async def wait_exit(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the app last seen to exit; True when it did."""
        if self._identity is None:
            return True
        pid, created = self._identity
        deadline = self._clock() + timeout
        while self._same_process(pid, created):
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(min(0.05, max(0.0, deadline - self._clock())))
        return True

    @staticmethod
    def _same_process(pid: int, created: float) -> bool:
        """Whether `pid` still is the process that started at `created` and has not exited (a zombie has)."""
        try:
            process = psutil.Process(pid)
            return process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True

    async def refresh(self) -> AppSample | None:
        """Look the app up again (in a thread: psutil reads /proc) and return the new sample."""
        async with self._lock:
            return await run_internal(self.refresh_sync)

    def refresh_sync(self) -> AppSample | None:
        previous = self.sample
        process = self._locate()
        if process is None:
            self.sample = None
            return None
        sample = self._read(process, previous)
        if sample is None:
            self.sample = None
            return None
        if self._identity is not None and sample.identity != self._identity:
            self.restarts += 1
            if self._on_restart is not None:
                self._on_restart(sample, previous)
        self._identity = sample.identity
        self.sample = sample
        return sample

    def _locate(self) -> psutil.Process | None:
        if self._process is not None and self._still_matches(self._process):
            return self._process
        self._process = None
        try:
            found, why = self._find()
        except (OSError, ValueError) as exc:
            self.error = f"cannot look up the app: {exc}"
            return None
        self.error = None if found is not None else (why or f"no process matches {self.description}")
        self._process = found
        return found

    def _still_matches(self, process: psutil.Process) -> bool:
        try:
            return process.is_running() and self._identity == (process.pid, process.create_time()) and (
                self.match is None or not self.match.pidfile or self._pidfile_pid() == process.pid)
        except (psutil.Error, OSError, ValueError):
            return False

    def _pidfile_pid(self) -> int:
        assert self.match and self.match.pidfile
        with open(self.match.pidfile, encoding="ascii") as handle:
            return int(handle.read().strip())

    def _find(self) -> tuple[psutil.Process | None, str | None]:
        """The app's process, or None and (when there is more to say than "no match") why."""
        if self.child_pid is not None:
            return _process_or_none(self.child_pid), None
        if self.match is None:
            return None, None
        if self.match.pidfile:
            try:
                written = os.stat(self.match.pidfile).st_mtime
                process = _process_or_none(self._pidfile_pid())
            except FileNotFoundError:
                return None, f"the pidfile {self.match.pidfile} does not exist"
            # An app writes its pidfile after it starts. A process that started later than the file was
            # written only got a recycled pid: it is not the app, and must never be signalled as it.
            if process is not None and process.create_time() > written + 1.0:
                return None, f"the pidfile {self.match.pidfile} is stale: pid {process.pid} started after it was written"
            return process, None
        me = os.getpid()
        if self.match.other_containers:
            return other_containers(me), None
        candidates = []
        for proc in psutil.process_iter(["pid", "name", "cmdline", "create_time"]):
            info = proc.info
            if info["pid"] == me:
                continue
            if self.match.name is not None:
                hit = info["name"] == self.match.name
            else:
                assert self._pattern is not None
                hit = bool(info["cmdline"]) and bool(self._pattern.search(" ".join(info["cmdline"])))
            if hit:
                candidates.append(proc)
        # Of several matches (a master and its workers), watch the oldest: the one that started them.
        return min(candidates, key=lambda p: (p.info["create_time"], p.pid), default=None), None

    def _read(self, process: psutil.Process, previous: AppSample | None) -> AppSample | None:
        now = self._clock()
        try:
            with process.oneshot():
                status = process.status()
                create_time = process.create_time()
                name = process.name()
                if status == psutil.STATUS_ZOMBIE:
                    rss = threads = fds = 0
                    cpu = 0.0
                else:
                    rss = process.memory_info().rss
                    threads = process.num_threads()
                    fds = _num_fds(process)
                    times = process.cpu_times()
                    cpu = times.user + times.system
        except psutil.ZombieProcess:
            status, rss, threads, fds, cpu = psutil.STATUS_ZOMBIE, 0, 0, 0, 0.0
            create_time, name = (previous.create_time, previous.name) if previous else (0.0, "?")
        except psutil.NoSuchProcess:
            self._process = None
            self.error = f"no process matches {self.description}"
            return None
        except psutil.AccessDenied as exc:
            self.error = f"not allowed to read the app's process (pid {process.pid}): {exc}"
            return None
        rate = None
        if previous is not None and previous.identity == (process.pid, create_time) and now > previous.at:
            rate = max(0.0, (cpu - previous.cpu_seconds) / (now - previous.at))
        return AppSample(pid=process.pid, create_time=create_time, name=name, status=status, rss=rss,
                         threads=threads, fds=fds, cpu_seconds=cpu, cpu_rate=rate, at=now)


def _mount_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None  # another user's process: its namespace links need ptrace access, which the agent lacks


def other_containers(me: int) -> psutil.Process | None:
    """The oldest top-level process of another container in the pod's shared process namespace.

    A container's first process has no parent in the pod's PID namespace (the runtime that started it is outside),
    so it shows parent pid 0; pid 1 is the pause process. The agent's own container (its top process, and anything
    exec'd into it) is left out by its mount namespace, where that can be read, and by ancestry. Only /proc/PID/stat
    is needed, which any user may read, unlike the namespace links of another user's processes.
    """
    own_ns = _mount_namespace("self")
    ancestors = set()
    try:
        process: psutil.Process | None = psutil.Process(me)
        while process is not None:
            ancestors.add(process.pid)
            process = process.parent()
    except psutil.Error:
        pass
    candidates = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "create_time"]):
        info = proc.info
        if info["ppid"] != 0 or info["pid"] == 1 or info["pid"] in ancestors or not info["cmdline"]:
            continue  # not a container's first process, the pause process, the agent's own, or a kernel thread
        if own_ns is not None and _mount_namespace(info["pid"]) == own_ns:
            continue  # exec'd into the agent's container (its preStop hook)
        candidates.append(proc)
    return min(candidates, key=lambda p: (p.info["create_time"], p.pid), default=None)


def _process_or_none(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except (psutil.NoSuchProcess, ValueError):
        return None


def _num_fds(process: psutil.Process) -> int:
    try:
        return process.num_fds()
    except (psutil.AccessDenied, AttributeError):
        return 0
