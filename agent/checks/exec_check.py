"""`exec`: a command exits 0; at the timeout it is killed with its whole process group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import IO

from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckType, ChildReaper
from agent.fields import Field, ListOf, Str, StrMap
from agent.process.reaper import exit_code, kill_quietly

MAX_OUTPUT = 4096  # bytes of combined stdout/stderr kept, from the end
REAP_BOUND = 5.0


@dataclass(frozen=True)
class Params:
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


class ExecCheck:
    def __init__(self, params: Params, reaper: ChildReaper, slots: asyncio.Semaphore | None) -> None:
        self.params, self.reaper, self.slots = params, reaper, slots
        self.env = {**os.environ, **dict(params.env)} if params.env else None

    async def run(self) -> str:
        if self.slots is None:
            return await self._run()
        # A cap on children at once: a burst of slow commands must not fork without bound.
        async with self.slots:
            return await self._run()

    async def _run(self) -> str:
        argv = self.params.command
        try:
            # Popen, not asyncio's subprocess: the agent's Reaper owns waitpid for every child.
            proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            raise CheckFailure(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise CheckFailure(f"command not executable: {argv[0]}") from None
        exited = self.reaper.watch(proc.pid)
        assert proc.stdout is not None
        try:
            output = await _read_capped(proc.stdout)
            status = await asyncio.shield(exited)  # shielded: a cancellation must not cancel the reaper's future
        except BaseException:
            # Cancelled at the timeout (or at shutdown): kill the whole group, then make sure it is reaped.
            kill_quietly(proc.pid, signal.SIGKILL, group=True)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(exited), REAP_BOUND)
            raise
        finally:
            if exited.done() and not exited.cancelled():
                proc.returncode = exit_code(exited.result())  # so Popen never waits for it itself
            proc.stdout.close()
        code = exit_code(status)
        text = output.decode("utf-8", "replace").strip()
        tail = f": {text}" if text else ""
        if code == 0:
            return f"exit 0{tail}"
        if code > 128 and os.WIFSIGNALED(status):
            raise CheckFailure(f"killed by {signal.Signals(code - 128).name}{tail}")
        raise CheckFailure(f"exit {code}{tail}")

    async def close(self) -> None:
        return None


async def _read_capped(pipe: IO[bytes]) -> bytes:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    kept = bytearray()
    try:
        while chunk := await reader.read(65536):
            kept += chunk
            if len(kept) > MAX_OUTPUT:
                del kept[: len(kept) - MAX_OUTPUT]
    finally:
        transport.close()
    return bytes(kept)


def _create(spec: CheckSpec[Params], ctx: CheckContext) -> ExecCheck:
    return ExecCheck(spec.params, ctx.reaper, ctx.exec_slots)


TYPE = CheckType(
    name="exec",
    fields=(Field("command", ListOf(Str(), nonempty=True), doc="argv of the command; exit 0 passes"),
            Field("env", StrMap(secret=True), doc="extra environment; values are treated as secrets")),
    params=Params,
    create=_create,
)
