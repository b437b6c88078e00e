"""Finds the watched app process through psutil and samples its resources."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from agent.config import AppMatch, StopScope
from agent.logs import event
from agent.process.tree import (
    Member,
    group_is_foreign,
    group_members,
    group_of,
    is_launcher,
    kill_all,
    leftover_message,
    mount_namespace,
    refusal,
    signal_group,
    signal_member,
    still_running,
    tree_of,
)
from agent.runtime.threads import run_internal

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
        self.reason: str | None = None  # why the target is the process it is, when there was a choice
        self._snapshot: list[Member] = []  # the tree when the stop signal was sent
        self._signalled: Member | None = None
        self._group: int | None = None  # the process group signalled with it, if any
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

    @property
    def target(self) -> Member | None:
        """The app's process as last seen."""
        sample = self.sample
        return None if sample is None else Member(sample.pid, sample.name, sample.create_time)

    def send(self, signum: int, scope: StopScope) -> str:
        """Signal the app last seen (and with scope `group` its process group, when that group is the app's own
        container's alone) after recording its tree; says whom the signal reached.

        Raises ProcessLookupError when the app is gone, PermissionError when the agent may not signal it.
        """
        if self._identity is None:
            raise ProcessLookupError("the app has not been found")
        pid, created = self._identity
        target = Member(pid, self.sample.name if self.sample else "?", created)
        if not target.running():
            raise ProcessLookupError(f"pid {pid} has exited")
        try:
            snapshot = tree_of(psutil.Process(pid))
        except psutil.NoSuchProcess:
            raise ProcessLookupError(f"pid {pid} has exited") from None
        if not snapshot or snapshot[0] != target:
            raise ProcessLookupError(f"pid {pid} has exited")
        target = snapshot[0]
        group, note = self._group_to_signal(target, snapshot) if scope is StopScope.GROUP else (None, None)
        self._snapshot, self._signalled, self._group = snapshot, target, group
        if group is not None and signal_group(group, signum, snapshot):
            return f"the app ({target}) and its process group {group} ({len(snapshot)} processes)"
        if signal_member(target, signum):
            return f"the app ({target})" + (f", not its process group: {note}" if note else "")
        raise ProcessLookupError(f"pid {pid} has exited")

    def _group_to_signal(self, target: Member, snapshot: list[Member]) -> tuple[int | None, str | None]:
        """The target's process group when it may be signalled whole (adding its members to the snapshot),
        else None and why not."""
        pgid = group_of(target.pid)
        if pgid is None:
            return None, "its process group cannot be read"
        refused = refusal(pgid)
        if refused:
            return None, f"that group is {refused}"
        members = group_members(pgid)
        foreign = group_is_foreign(members)
        if foreign is None:
            return None, "the agent cannot tell whether that group holds a process of its own container"
        if not foreign:
            return None, "that group holds a process of the agent's own container"
        snapshot.extend(m for m in members if m not in snapshot)
        return pgid, None

    def kill(self, scope: StopScope) -> list[Member]:
        """SIGKILL every process recorded with the stop signal that still runs (and the group, if it was signalled):
        whatever the scope, nothing of the app is left running after stop_timeout."""
        members = still_running(self._snapshot or ([self.target] if self.target else []))
        return kill_all(members, self._group if scope is StopScope.GROUP else None)

    def leftovers(self) -> list[Member]:
        """In run mode the agent did not start the app: what it leaves behind is the kubelet's to end."""
        return []

    def remaining(self) -> str | None:
        """Which processes recorded with the stop signal still run, or None when none does."""
        left = still_running(self._snapshot)
        return leftover_message(self._signalled, left) if left else None

    async def wait_exit(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every process recorded with the stop signal to exit; True when they did."""
        if self._identity is None:
            return True
        pid, created = self._identity
        watched = self._snapshot or [Member(pid, "?", created)]
        deadline = self._clock() + timeout
        while await run_internal(still_running, watched):
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(min(0.05, max(0.0, deadline - self._clock())))
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
        if sample.identity != self._identity and self.reason:
            event(log, logging.INFO, f"the app is pid {sample.pid} ({sample.name}): {self.reason}",
                  pid=sample.pid, reason=self.reason)
        self._identity = sample.identity
        self.sample = sample
        return sample

    def watched_tree(self) -> list[Member]:
        """The app last seen and its descendants, read now (blocking: /proc), for /status; [] when it is gone."""
        sample = self.sample
        if sample is None:
            return []
        try:
            members = tree_of(psutil.Process(sample.pid))
        except psutil.Error:
            return []
        return members if members and members[0].started == sample.create_time else []

    def _locate(self) -> psutil.Process | None:
        # A shell kept as the target is looked past again: the app it starts may not have run at first.
        if self._process is not None and self._still_matches(self._process) and not (
                self.child_pid is None and self.match is not None and not self.match.pidfile
                and is_launcher(self._process)):
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
        return self._choose(), None

    def _choose(self) -> psutil.Process | None:
        """The app among the processes `app.match` finds, and (in `self.reason`) why it when there was a choice.

        Processes the agent started (its exec checks' commands) are never the app. Of matches that descend
        from one another, the one that started the others is the app, unless it is a shell or a launcher
        running a match: then that descendant is. Of unrelated matches, the oldest is.
        """
        assert self.match is not None
        me = os.getpid()
        if self.match.other_containers:
            return other_containers(me)
        own = {p.pid for p in _children_of(me)}
        parents: dict[int, int] = {}
        candidates: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["pid", "ppid", "name", "cmdline", "create_time"]):
            info = proc.info
            parents[info["pid"]] = info["ppid"] or 0
            if info["pid"] == me or info["pid"] in own:
                continue
            if self.match.name is not None:
                hit = info["name"] == self.match.name
            else:
                assert self._pattern is not None
                hit = bool(info["cmdline"]) and bool(self._pattern.search(" ".join(info["cmdline"])))
            if hit:
                candidates[info["pid"]] = proc

        def ancestors(pid: int) -> list[int]:
            chain: list[int] = []
            while (pid := parents.get(pid, 0)) > 0 and pid not in chain:
                chain.append(pid)
            return chain

        lineage = {pid: ancestors(pid) for pid in candidates}
        roots = sorted((p for pid, p in candidates.items() if not set(lineage[pid]) & candidates.keys()),
                       key=lambda p: (p.info["create_time"], p.pid))
        if not roots:
            self.reason = None
            return None
        chosen, notes = roots[0], []
        while is_launcher(chosen):
            below = [p for pid, p in candidates.items() if chosen.pid in lineage[pid]]
            if not below:
                break
            nearest = min(below, key=lambda p: (lineage[p.pid].index(chosen.pid), p.info["create_time"], p.pid))
            notes.append(f"{_name(chosen)} (pid {chosen.pid}) runs it and does not pass a stop signal on")
            chosen = nearest
        if len(roots) > 1:
            others = ", ".join(f"pid {p.pid} ({_name(p)})" for p in roots[1:])
            notes.append(f"{len(roots)} unrelated processes match; the oldest is watched, not {others}")
        self.reason = "; ".join(notes) or None
        return chosen

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


def other_containers(me: int) -> psutil.Process | None:
    """The oldest top-level process of another container in the pod's shared process namespace.

    A container's first process has no parent in the pod's PID namespace (the runtime that started it is outside),
    so it shows parent pid 0; pid 1 is the pause process. The agent's own container (its top process, and anything
    exec'd into it) is left out by its mount namespace, where that can be read, and by ancestry. Only /proc/PID/stat
    is needed, which any user may read, unlike the namespace links of another user's processes.
    """
    own_ns = mount_namespace("self")
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
        if own_ns is not None and mount_namespace(info["pid"]) == own_ns:
            continue  # exec'd into the agent's container (its preStop hook)
        candidates.append(proc)
    return min(candidates, key=lambda p: (p.info["create_time"], p.pid), default=None)


def _children_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _name(process: psutil.Process) -> str:
    return str(process.info.get("name") or "?")


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
