"""`tcp`: a TCP connection to `address` opens."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from agent.checks import CheckContext, CheckFailure, CheckType
from agent.fields import Address, Field
from agent.units import format_address, is_loopback_host


@dataclass(frozen=True)
class Params:
    address: tuple[str, int]


class TcpCheck:
    def __init__(self, params: Params) -> None:
        self.host, self.port = params.address

    async def run(self) -> str:
        where = format_address(self.host, self.port)
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except ConnectionRefusedError:
            raise CheckFailure(f"connection refused by {where}") from None
        except OSError as exc:
            raise CheckFailure(f"cannot connect to {where}: {exc.strerror or exc}") from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return f"connected to {where}"

    async def close(self) -> None:
        return None


def _create(spec: Any, ctx: CheckContext) -> TcpCheck:
    return TcpCheck(spec.params)


TYPE = CheckType(
    name="tcp",
    fields=(Field("address", Address(), doc="host:port to connect to"),),
    params=Params,
    create=_create,
    is_dependency=lambda params: not is_loopback_host(params.address[0]),
)
