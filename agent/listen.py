"""The listening socket on every address of a pod: IPv4 and IPv6 on one socket, IPv4 alone where the kernel has no IPv6.

The kubelet's probes and hooks, and the API server's admission calls, come to the pod IP, which is IPv4 or IPv6
(IPv6 in an IPv6 single-stack pod, and in a dual-stack pod whose first IP is IPv6).
"""

from __future__ import annotations

import errno
import logging
import socket

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
