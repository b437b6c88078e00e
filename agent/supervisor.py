"""exec mode: the app as the agent's own child, started, signalled and reaped like tini does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence

from agent.reaper import Reaper, exit_code

# Signals the agent handles itself: SIGTERM/SIGINT start the ordered shutdown, SIGHUP reloads the agent's
# config, SIGCHLD is the reaper's. Every other catchable signal is forwarded to the child, as tini does.
FORWARDED = tuple(
    s for s in (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT,
                signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU, signal.SIGURG, signal.SIGXCPU, signal.SIGXFSZ,
                signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO, signal.SIGPWR, signal.SIGSYS, signal.SIGTSTP)
)


class SpawnError(Exception):
    """The command could not start; `code` is 127 (not found) or 126 (not executable)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ChildProcess:
    """The app started by `sidecar-agent exec`: the agent's child, reaped through the Reaper."""

    def __init__(self, argv: Sequence[str], reaper: Reaper) -> None:
        self.argv = list(argv)
        self.reaper = reaper
        self.pid = 0
        self.exited: asyncio.Future[int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        """Start the command; raise SpawnError with the shell's exit code when it cannot run."""
        try:
            self._proc = subprocess.Popen(self.argv)
        except FileNotFoundError:
            raise SpawnError(f"command not found: {self.argv[0]}", 127) from None
        except PermissionError:
            raise SpawnError(f"command not executable: {self.argv[0]}", 126) from None
        except OSError as exc:
            raise SpawnError(f"cannot run {self.argv[0]}: {exc.strerror or exc}", 126) from None
        self.pid = self._proc.pid
        self.exited = self.reaper.watch(self.pid)  # registered before the loop runs again: no exit is missed
        self.exited.add_done_callback(self._note_exit)
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

    async def alive(self) -> bool:
        return self.exited is not None and not self.exited.done()

    def send(self, signum: int) -> int:
        if self.exited is None or self.exited.done():
            raise ProcessLookupError("the child has exited")
        os.kill(self.pid, signum)
        return self.pid

    def forward(self, signum: int) -> None:
        """Pass a signal the agent does not handle on to the child."""
        if self.exited is not None and not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def wait_exit(self, timeout: float) -> bool:
        if self.exited is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        except TimeoutError:
            return False
        return True
