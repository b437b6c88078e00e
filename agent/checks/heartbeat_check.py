"""`heartbeat`: the app pushes `POST /heartbeat/NAME`; the check fails when none came within `ttl`."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckType
from agent.fields import Duration, Field
from agent.units import format_duration


@dataclass(frozen=True)
class Params:
    ttl: float


class HeartbeatCheck:
    def __init__(self, name: str, params: Params, ctx: CheckContext) -> None:
        self.name, self.ttl, self.ctx = name, params.ttl, ctx

    async def run(self) -> str:
        last = self.ctx.heartbeats.get(self.name)
        if last is None:
            raise CheckFailure(f"no heartbeat received yet (POST /heartbeat/{self.name})")
        age = self.ctx.clock() - last
        if age > self.ttl:
            raise CheckFailure(f"last heartbeat {format_duration(round(age, 1))} ago, over ttl {format_duration(self.ttl)}")
        return f"last heartbeat {format_duration(round(age, 1))} ago"

    async def close(self) -> None:
        return None


def _create(spec: CheckSpec[Params], ctx: CheckContext) -> HeartbeatCheck:
    return HeartbeatCheck(spec.name, spec.params, ctx)


TYPE = CheckType(
    name="heartbeat",
    fields=(Field("ttl", Duration(positive=True), doc="fail when no heartbeat arrived for this long"),),
    params=Params,
    create=_create,
)
