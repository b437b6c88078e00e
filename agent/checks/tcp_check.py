"""`tcp`: a TCP connection to `address` opens."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import select
import socket
from dataclasses import dataclass
from typing import Any

from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckType
from agent.fields import Address, Field
from agent.units import format_address, is_loopback_host

Lookup = list[tuple[Any, ...]]


@dataclass(frozen=True)
class Params:
    address: tuple[str, int]


class TcpCheck:
    def __init__(self, params: Params) -> None:
        self.host, self.port = params.address
        self.where = format_address(self.host, self.port)
        self.numeric = numeric_address(self.host, self.port)  # an IP address: no lookup at all
        self._lookup: asyncio.Future[Lookup] | None = None

    async def run(self) -> str:
        targets = self.numeric or await self._resolve()
        # A bare non-blocking socket, closed once connected: no transport or stream pair to build and tear down.
        (await open_first(asyncio.get_running_loop(), targets, self.where)).close()
        return f"connected to {self.where}"

    async def _resolve(self) -> list[tuple[int, Any]]:
        """The host's addresses. One lookup at a time: a lookup that outlived a timed-out run is awaited
        again by the next run rather than joined by another, so a hung resolver holds one thread, not one a run."""
        if self._lookup is None:
            loop = asyncio.get_running_loop()
            # The lookup's thread as a plain future (what loop.getaddrinfo runs), not a task of its own: the check owns
            # it, awaits it in this run or the next, and cancels it at close.
            self._lookup = loop.run_in_executor(None, socket.getaddrinfo, self.host, self.port, 0, socket.SOCK_STREAM)
        lookup = self._lookup
        try:
            infos = await asyncio.shield(lookup)
        except socket.gaierror as exc:
            raise CheckFailure(f"cannot resolve {self.host}: {exc.strerror or exc}") from None
        finally:
            if lookup.done():
                self._lookup = None
        return list(dict.fromkeys((info[0], info[4]) for info in infos))

    async def close(self) -> None:
        if self._lookup is not None and not self._lookup.done():
            self._lookup.cancel()


async def open_first(loop: asyncio.AbstractEventLoop, targets: list[tuple[int, Any]], where: str) -> socket.socket:
    """A socket connected to the first of `targets` ((family, address) pairs) that takes the connection, tried in
    turn (both loopbacks for `localhost`); CheckFailure naming `where` and the last error when none does. A family
    the kernel lacks (an IPv6 loopback on a host without IPv6) counts as one more refusal."""
    last: OSError | None = None
    for family, address in targets:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            last = exc
            continue
        try:
            await connect(loop, sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if isinstance(last, ConnectionRefusedError):
        raise CheckFailure(f"connection refused by {where}")
    raise CheckFailure(f"cannot connect to {where}: {getattr(last, 'strerror', None) or last}")


async def connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: Any) -> None:
    """Connect `sock` (made non-blocking here) to a resolved `address`, waiting for it on the loop: what
    loop.sock_connect does, without its lookup of an address that is already one, nor its future's callbacks."""
    sock.setblocking(False)
    error = sock.connect_ex(address)
    if error in (errno.EINPROGRESS, errno.EAGAIN):
        # A loopback connection (a sidecar's common case) has already settled, one way or the other, when
        # connect_ex returns: asking once costs one syscall, where waiting costs two epoll changes and a loop wake.
        if not _settled(sock):
            writable = loop.create_future()
            loop.add_writer(sock, _set_done, writable)
            try:
                await writable
            finally:
                loop.remove_writer(sock)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))


def _settled(sock: socket.socket) -> bool:
    """Whether a connection in progress has already ended (connected or failed), without waiting."""
    poller = select.poll()  # not select.select: a descriptor may be above FD_SETSIZE
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(0))


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# `localhost` means loopback in both families, without a lookup (RFC 6761): an app may listen on 127.0.0.1 only, on
# ::1 only, or on both, and a check of it (such as one inject makes from a probe) must reach it in each case.
# IPv4 first: most apps listen there, and a dual-stack listener takes it too; ::1 refuses at once when unused.
LOCALHOST = "localhost"
LOOPBACKS = ("127.0.0.1", "::1")


def numeric_address(host: str, port: int) -> list[tuple[int, Any]]:
    """(family, address) of an IP address given as the host (a numeric lookup, which never blocks), the loopback
    addresses of both families for `localhost`; [] for another name."""
    if host.lower() == LOCALHOST:
        return [pair for loopback in LOOPBACKS for pair in numeric_address(loopback, port)]
    try:
        ipaddress.ip_address(host.partition("%")[0])
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (ValueError, socket.gaierror):
        return []
    return list(dict.fromkeys((info[0], info[4]) for info in infos))


def _create(spec: CheckSpec[Params], ctx: CheckContext) -> TcpCheck:
    return TcpCheck(spec.params)


TYPE = CheckType(
    name="tcp",
    fields=(Field("address", Address(), doc="host:port to connect to"),),
    params=Params,
    create=_create,
    is_dependency=lambda params: not is_loopback_host(params.address[0]),
)
