"""`file`: a file exists and, with `max_age`, was modified recently (a heartbeat file)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckType
from agent.fields import Duration, Field, Str, optional
from agent.units import format_duration


@dataclass(frozen=True)
class Params:
    path: str
    max_age: float | None = None


class FileCheck:
    def __init__(self, params: Params) -> None:
        self.params = params

    async def run(self) -> str:
        try:
            # A thread, because a stat on a network filesystem can hang.
            st = await asyncio.to_thread(os.stat, self.params.path)
        except FileNotFoundError:
            raise CheckFailure(f"{self.params.path} does not exist") from None
        except OSError as exc:
            raise CheckFailure(f"cannot stat {self.params.path}: {exc.strerror or exc}") from None
        age = max(0.0, time.time() - st.st_mtime)  # file times are wall-clock by nature
        if self.params.max_age is not None and age > self.params.max_age:
            raise CheckFailure(f"{self.params.path} was last modified {format_duration(round(age, 1))} ago, "
                               f"over max_age {format_duration(self.params.max_age)}")
        return f"{self.params.path} exists, modified {format_duration(round(age, 1))} ago"

    async def close(self) -> None:
        return None


def _create(spec: CheckSpec[Params], ctx: CheckContext) -> FileCheck:
    return FileCheck(spec.params)


TYPE = CheckType(
    name="file",
    fields=(Field("path", Str(), doc="the file that must exist"),
            optional("max_age", Duration(positive=True), "fail when the file is older than this")),
    params=Params,
    create=_create,
)
