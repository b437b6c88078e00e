"""One aiohttp listener, the probe server's and the webhook's: an AppRunner on one site, started and closed cleanly.

On every address of a pod it listens on one socket for IPv4 and IPv6 (IPv4 alone where the kernel has no IPv6): the
kubelet's probes and hooks, and the API server's admission calls, come to the pod IP, which is IPv4 or IPv6 (IPv6
in an IPv6 single-stack pod, and in a dual-stack pod whose first IP is IPv6). AppRunner and a site rather than
run_app, so that the caller owns the loop, the signals and the order of shutdown.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from typing import Any

from aiohttp import web

from agent.config import ANY_HOST
from agent.logs import event

log = logging.getLogger("agent.server")
BACKLOG = 1024


def any_address_socket(port: int, family: socket.AddressFamily = socket.AF_INET6) -> tuple[socket.socket, str]:
    """A listening socket on every address of the pod, and the host it is bound to.

    `[::]` with IPV6_V6ONLY off takes IPv4 too (as ::ffff:a.b.c.d), so a probe reaches the agent whichever family the
    pod IP has; asyncio's own listener would set IPV6_V6ONLY on. Where the kernel has no IPv6 (booted with
    ipv6.disable=1: the family itself is missing), `0.0.0.0`. `family` is a parameter for the test of that fallback.
    """
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            raise
        event(log, logging.INFO, f"this kernel has no IPv6 ({exc.strerror or exc}): listening on IPv4 only")
        sock, family = socket.socket(socket.AF_INET, socket.SOCK_STREAM), socket.AF_INET
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        host = "0.0.0.0"
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            host = ANY_HOST
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, host


async def start(app: web.Application, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                **runner_args: Any) -> tuple[web.AppRunner, str, int]:
    """Set up a runner for `app` and bind it to host:port (`::` on every address, as any_address_socket does; port 0
    picks a free one): the runner, the host bound and the port bound.

    `runner_args` go to the AppRunner (and on to each connection's handler: timeouts, header limits). A bind that
    fails cleans the runner up before the error goes on.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **runner_args)
    await runner.setup()
    try:
        site: web.BaseSite
        if host == ANY_HOST:
            sock, host = any_address_socket(port)
            site = web.SockSite(runner, sock, ssl_context=ssl_context)
        else:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True, backlog=BACKLOG)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = runner.addresses  # (host, port) or, for IPv6, (host, port, flowinfo, scope_id)
    return runner, host, int(addresses[0][1]) if addresses else port


async def close(runner: web.AppRunner | None) -> None:
    """Stop accepting, let requests in flight finish (bounded by the runner's shutdown_timeout), close every
    connection."""
    if runner is not None:
        await runner.cleanup()
