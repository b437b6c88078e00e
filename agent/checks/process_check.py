"""`process`: the app exists, is neither a zombie nor stopped, and stays inside its limits."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckType
from agent.fields import Number, Size, optional

STOPPED = {"stopped", "tracing-stop"}


@dataclass(frozen=True)
class Params:
    max_rss: int | None = None
    max_threads: int | None = None
    max_fds: int | None = None
    max_cpu: float | None = None


class ProcessCheck:
    def __init__(self, params: Params, ctx: CheckContext) -> None:
        self.params, self.app = params, ctx.app

    async def run(self) -> str:
        if self.app is None:  # the agent watches no app: a config reload added this check without app.match
            raise CheckFailure("no app to watch: a process check needs app.match, set when the agent starts")
        sample = await self.app.refresh()
        if sample is None:
            raise CheckFailure(self.app.error or f"no process matches {self.app.description}")
        if sample.status == "zombie":
            raise CheckFailure(f"pid {sample.pid} is a zombie (it exited and was not reaped)")
        if sample.status in STOPPED:
            raise CheckFailure(f"pid {sample.pid} is stopped ({sample.status}, e.g. by SIGSTOP)")
        p = self.params
        if p.max_rss is not None and sample.rss > p.max_rss:
            raise CheckFailure(f"pid {sample.pid} uses {_mib(sample.rss)} resident memory, over max_rss {_mib(p.max_rss)}")
        if p.max_threads is not None and sample.threads > p.max_threads:
            raise CheckFailure(f"pid {sample.pid} runs {sample.threads} threads, over max_threads {p.max_threads}")
        if p.max_fds is not None and sample.fds > p.max_fds:
            raise CheckFailure(f"pid {sample.pid} has {sample.fds} open files, over max_fds {p.max_fds}")
        if p.max_cpu is not None and sample.cpu_rate is not None and sample.cpu_rate > p.max_cpu:
            raise CheckFailure(f"pid {sample.pid} uses {sample.cpu_rate:.2f} cores, over max_cpu {p.max_cpu:g}")
        return f"pid {sample.pid} {sample.status}, {_mib(sample.rss)}, {sample.threads} threads, {sample.fds} fds"

    async def close(self) -> None:
        return None


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f}Mi"


def _create(spec: CheckSpec[Params], ctx: CheckContext) -> ProcessCheck:
    return ProcessCheck(spec.params, ctx)


TYPE = CheckType(
    name="process",
    fields=(
        optional("max_rss", Size(), "fail when resident memory exceeds this"),
        optional("max_threads", Number(integer=True, minimum=1), "fail when the app runs more threads"),
        optional("max_fds", Number(integer=True, minimum=1), "fail when the app holds more open files"),
        optional("max_cpu", Number(integer=False, minimum=0), "fail when the app uses more cores than this"),
    ),
    params=Params,
    create=_create,
)
