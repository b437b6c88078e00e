"""The one owner of SIGCHLD: reaps every exited child (and adopted orphans) and hands exit statuses to waiters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

log = logging.getLogger("agent.reaper")
PR_SET_CHILD_SUBREAPER = 36


def exit_code(status: int) -> int:
    """A shell-style exit code from a raw wait status: the code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1


def become_subreaper() -> bool:
    """Adopt orphaned descendants (so they can be reaped) when not PID 1; True on success."""
    if os.getpid() == 1:
        return True
    import ctypes.util  # only in exec mode: ctypes costs the run mode memory for nothing

    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


class Reaper:
    """Waits on every child with waitpid(-1): a registered pid's status resolves its future, others are just reaped.

    Children must be started without asyncio's subprocess machinery (whose own waitpid would race this one),
    and registered with `watch` before the loop runs again, so no exit can be missed.
    """

    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reaped_orphans = 0

    def install(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self.reap()
            self._loop = None

    def watch(self, pid: int) -> asyncio.Future[int]:
        """A future resolved with `pid`'s raw wait status when it exits."""
        loop = self._loop or asyncio.get_running_loop()
        future = self._waiters.get(pid)
        if future is None:
            future = self._waiters[pid] = loop.create_future()
        # The child may have exited before it was registered; a reap now catches that.
        loop.call_soon(self.reap)
        return future

    def reap(self) -> None:
        """Collect every exited child without blocking."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            future = self._waiters.pop(pid, None)
            if future is None:
                self.reaped_orphans += 1
                log.debug("reaped orphan pid %d", pid)
            elif not future.done():
                future.set_result(status)


def kill_quietly(pid: int, signum: int, *, group: bool = False) -> None:
    """Send a signal to a process (or its group) that may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
