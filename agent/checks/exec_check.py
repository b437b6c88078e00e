"""`exec`: a command exits 0; it is killed (with its process group) at the timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Any

from agent.checks import CheckContext, CheckFailure, CheckType
from agent.fields import Field, ListOf, Str, StrMap

MAX_OUTPUT = 4096  # bytes of combined stdout/stderr kept, from the end


@dataclass(frozen=True)
class Params:
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


class ExecCheck:
    def __init__(self, params: Params) -> None:
        self.params = params
        self.env = {**os.environ, **dict(params.env)} if params.env else None

    async def run(self) -> str:
        argv = self.params.command
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            raise CheckFailure(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise CheckFailure(f"command not executable: {argv[0]}") from None
        try:
            output = await _read_capped(proc)
            code = await proc.wait()
        except BaseException:
            # Cancelled at the timeout (or shutdown): kill the whole group, then reap it.
            _kill_group(proc.pid)
            await proc.wait()
            raise
        text = output.decode("utf-8", "replace").strip()
        tail = f": {text}" if text else ""
        if code == 0:
            return f"exit 0{tail}"
        if code < 0:
            raise CheckFailure(f"killed by {signal.Signals(-code).name}{tail}")
        raise CheckFailure(f"exit {code}{tail}")

    async def close(self) -> None:
        return None


async def _read_capped(proc: asyncio.subprocess.Process) -> bytes:
    assert proc.stdout is not None
    kept = bytearray()
    while chunk := await proc.stdout.read(65536):
        kept += chunk
        if len(kept) > MAX_OUTPUT:
            del kept[: len(kept) - MAX_OUTPUT]
    return bytes(kept)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _create(spec: Any, ctx: CheckContext) -> ExecCheck:
    return ExecCheck(spec.params)


TYPE = CheckType(
    name="exec",
    fields=(Field("command", ListOf(Str(), nonempty=True), doc="argv of the command; exit 0 passes"),
            Field("env", StrMap(secret=True), (), "extra environment; values are treated as secrets")),
    params=Params,
    create=_create,
)
