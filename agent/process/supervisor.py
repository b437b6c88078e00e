"""exec mode: the app started in its own session, its whole process tree signalled, waited for and reaped.

Like dumb-init, the stop signal (and the SIGKILL at stop_timeout) reaches the app's process group, so a
shell between the agent and the app cannot swallow it; every other forwarded signal goes to the direct
child only, because apps such as gunicorn give them meaning in the master alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence

import psutil

from agent.config import StopScope
from agent.process.reaper import Reaper, exit_code
from agent.process.tree import Member, kill_all, leftover_message, member, signal_group, signal_member, tree_of
from agent.runtime.threads import run_internal

# Signals the agent handles itself: SIGTERM/SIGINT start the ordered shutdown, SIGHUP reloads the agent's
# config, SIGCHLD is the reaper's. Every other catchable signal is forwarded to the child, as tini does.
FORWARDED = tuple(
    s for s in (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT,
                signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU, signal.SIGURG, signal.SIGXCPU, signal.SIGXFSZ,
                signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO, signal.SIGPWR, signal.SIGSYS, signal.SIGTSTP)
)
POLL = 0.05


class SpawnError(Exception):
    """The command could not start; `code` is 127 (not found) or 126 (not executable)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class AppSupervisor:
    """The app started by `sidecar-agent exec` and every process it starts: the agent's child is the root,
    its session (setsid) holds the rest, and orphans come back to the agent, a subreaper, to be reaped."""

    def __init__(self, argv: Sequence[str], reaper: Reaper) -> None:
        self.argv = list(argv)
        self.reaper = reaper
        self.pid = 0
        self.root: Member | None = None
        self.exited: asyncio.Future[int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._known: dict[int, Member] = {}  # every member seen so far, so a process that left the session is kept

    def start(self) -> int:
        """Start the command in a new session; raise SpawnError with the shell's exit code when it cannot run."""
        try:
            self._proc = subprocess.Popen(self.argv, start_new_session=True)
        except FileNotFoundError:
            raise SpawnError(f"command not found: {self.argv[0]}", 127) from None
        except PermissionError:
            raise SpawnError(f"command not executable: {self.argv[0]}", 126) from None
        except OSError as exc:
            raise SpawnError(f"cannot run {self.argv[0]}: {exc.strerror or exc}", 126) from None
        self.pid = self._proc.pid
        self.exited = self.reaper.watch(self.pid)  # registered before the loop runs again: no exit is missed
        self.exited.add_done_callback(self._note_exit)
        with contextlib.suppress(psutil.Error):
            self.root = member(psutil.Process(self.pid))
        if self.root is not None:
            self._known[self.pid] = self.root
        return self.pid

    def _note_exit(self, future: asyncio.Future[int]) -> None:
        if self._proc is not None and not future.cancelled():
            self._proc.returncode = exit_code(future.result())  # so Popen never waits for it itself

    @property
    def description(self) -> str:
        return f"child pid {self.pid} ({os.path.basename(self.argv[0])})"

    @property
    def ever_seen(self) -> bool:
        return self.exited is not None

    @property
    def exit_code(self) -> int | None:
        if self.exited is None or not self.exited.done() or self.exited.cancelled():
            return None
        return exit_code(self.exited.result())

    @property
    def child_running(self) -> bool:
        return self.exited is not None and not self.exited.done()

    async def alive(self) -> bool:
        return self.child_running

    def tree(self) -> list[Member]:
        """The app's processes that run now: the child and its descendants, the processes of its session
        (orphans the agent adopted), and any member seen before that still runs. Blocking: reads /proc."""
        found: dict[int, Member] = {}
        if self.child_running:
            with contextlib.suppress(psutil.Error):
                found.update((m.pid, m) for m in tree_of(psutil.Process(self.pid)))
        if self.pid:
            with contextlib.suppress(psutil.Error):
                for process in psutil.Process().children(recursive=True):
                    if process.pid not in found and _session(process.pid) == self.pid:
                        m = member(process)
                        if m is not None:
                            found[m.pid] = m
        for known in list(self._known.values()):
            if known.pid not in found and known.running():
                found[known.pid] = known
        self._known = {**{k: v for k, v in self._known.items() if v.running()}, **found}
        if self.root is not None and found.get(self.root.pid) == self.root:
            self.root = found[self.root.pid]  # the same process under the name it has now (a script that exec'd)
        return sorted(found.values(), key=lambda m: (m.started, m.pid))

    def send(self, signum: int, scope: StopScope) -> str:
        """The stop signal: to the app's process group (scope group) or to the child alone; says whom it reached.

        Raises ProcessLookupError when nothing of the app runs any more.
        """
        members = self.tree()
        if scope is StopScope.GROUP and signal_group(self.pid, signum, members):
            return f"the app's process group {self.pid} ({len(members)} processes)"
        if self.root is not None and self.child_running and signal_member(self.root, signum):
            return f"the app ({self.root})"
        raise ProcessLookupError("the app has exited")

    def kill(self, scope: StopScope) -> list[Member]:
        """SIGKILL what is left of the tree, whatever the scope: the agent never exits while part of the app it
        started runs."""
        return kill_all(self.tree(), self.pid if scope is StopScope.GROUP else None)

    def leftovers(self) -> list[Member]:
        """Processes of the tree still running once the child has exited."""
        return [] if self.child_running else self.tree()

    def remaining(self) -> str | None:
        """Which processes of the tree still run, or None when none does."""
        left = self.tree()
        if not left:
            return None
        return leftover_message(self.root if not self.child_running else None, left)

    def forward(self, signum: int) -> None:
        """Pass a signal the agent does not handle on to the child (never its group: see the module's doc)."""
        if self.child_running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def wait_exit(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the child and then every process of its tree to exit."""
        if self.exited is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        except TimeoutError:
            return False
        while await run_internal(self.tree):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(POLL, max(0.0, deadline - loop.time())))
        return True


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
