"""The app's process tree: who belongs to it, and signals that reach only the processes meant.

Every signal goes through `signal_member` or `signal_group`, which refuse pid 0 and -1 (every process
the agent may signal), pid 1, the agent itself and its own process group, and any process whose start
time no longer matches the one recorded (its pid was reused).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import psutil

from agent.kube.facts import LAUNCHERS, NODE_LAUNCHER_SCRIPTS, SHELLS

# What runs the app as a child and does not pass a stop signal on to it: shells and launchers.
NON_RELAYING = SHELLS | LAUNCHERS


@dataclass(frozen=True)
class Member:
    """One process of the app's tree, known by pid and start time together (a pid alone can be reused)."""

    pid: int
    name: str = field(compare=False)
    started: float  # psutil's create_time: epoch seconds

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.name})"

    def running(self) -> bool:
        """Whether this very process still exists and has not exited (a zombie has)."""
        try:
            process = psutil.Process(self.pid)
            return process.create_time() == self.started and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True


def member(process: psutil.Process) -> Member | None:
    """The Member for a live process, or None when it is gone or a zombie."""
    try:
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return Member(process.pid, process.name(), process.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def tree_of(root: psutil.Process) -> list[Member]:
    """`root` and every live descendant of it, root first."""
    found = [m for m in (member(root),) if m is not None]
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        found += [m for m in map(member, root.children(recursive=True)) if m is not None]
    return found


def is_launcher(process: psutil.Process) -> bool:
    """A shell or launcher known to keep the stop signal to itself (npm and yarn run as `node npm-cli.js`)."""
    try:
        name, argv = process.name(), process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    if name in NON_RELAYING or (argv and os.path.basename(argv[0]) in NON_RELAYING):
        return True
    return name == "node" and len(argv) > 1 and os.path.basename(argv[1]) in NODE_LAUNCHER_SCRIPTS


def still_running(members: Iterable[Member]) -> list[Member]:
    return [m for m in members if m.running()]


def refusal(pid: int) -> str | None:
    """Why the agent must never signal `pid` (as a process or a process group id), or None."""
    if pid <= 1:
        return f"pid {pid} would reach every process (or init)"
    if pid == os.getpid():
        return "the agent itself"
    if pid == os.getpgrp():
        return "the agent's own process group"
    return None


def signal_member(target: Member, signum: int) -> bool:
    """Signal one process if it is still the one recorded; True when the signal was sent.

    Raises PermissionError when the agent may not signal it.
    """
    if refusal(target.pid) is not None or not target.running():
        return False
    try:
        os.kill(target.pid, signum)
    except ProcessLookupError:
        return False
    return True


def signal_each(members: Iterable[Member], signum: int) -> list[Member]:
    """Signal each member that is still the process recorded, once; the ones reached."""
    return [m for m in members if signal_member(m, signum)]


def kill_all(members: Sequence[Member], pgid: int | None) -> list[Member]:
    """SIGKILL the group `pgid` (when given and still the app's) and each member still recorded; the members that
    are gone now, killed or already exited."""
    if pgid is not None:
        signal_group(pgid, signal.SIGKILL, members)
    return [m for m in members if signal_member(m, signal.SIGKILL) or not m.running()]


def signal_group(pgid: int, signum: int, members: Iterable[Member]) -> bool:
    """Signal process group `pgid` when a recorded member still runs in it (so the id was not reused).

    Raises PermissionError when the agent may not signal the group.
    """
    if refusal(pgid) is not None:
        return False
    if not any(m.running() and group_of(m.pid) == pgid for m in members):
        return False
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def group_of(pid: int) -> int | None:
    """The process group of `pid`, or None when it is gone."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def group_members(pgid: int) -> list[Member]:
    """Every live process whose process group is `pgid`."""
    found = []
    for process in psutil.process_iter():
        if group_of(process.pid) == pgid:
            m = member(process)
            if m is not None:
                found.append(m)
    return found


def mount_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def group_is_foreign(members: Iterable[Member], *,
                     namespace: Callable[[int | str], str | None] = mount_namespace) -> bool | None:
    """Whether no process of the group runs in the agent's own container (judged by mount namespace).

    None when that cannot be told: a namespace the agent may not read, or its own unreadable.
    """
    own = namespace("self")
    if own is None:
        return None
    seen = False
    for m in members:
        theirs = namespace(m.pid)
        if theirs is None:
            if m.running():
                return None
            continue  # exited meanwhile: it no longer counts
        if theirs == own:
            return False
        seen = True
    return True if seen else None


def describe(members: Iterable[Member]) -> str:
    return ", ".join(str(m) for m in members)


def leftover_message(target: Member | None, left: list[Member]) -> str:
    """Say which processes still run, naming the target's own exit when it is not among them."""
    runs = "still run" if len(left) > 1 else "still runs"
    if target is not None and target not in left:
        role = "shell" if target.name in NON_RELAYING else "process"
        return f"the app's {role} {target} exited but {describe(left)} {runs}"
    return f"{describe(left)} {runs}"
