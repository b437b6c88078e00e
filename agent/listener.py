"""One aiohttp listener: an AppRunner with one TCPSite, started on a port (0 picks a free one) and closed cleanly.

The probe server and the webhook both serve this way (AppRunner and TCPSite rather than run_app, so that the
caller owns the loop, the signals and the order of shutdown).
"""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web


async def start(app: web.Application, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                backlog: int = 128, **runner_args: Any) -> tuple[web.AppRunner, int]:
    """Set up a runner for `app` and bind it to host:port; the runner and the port it bound.

    `runner_args` go to the AppRunner (and on to each connection's handler: timeouts, header limits). A bind that
    fails cleans the runner up before the error goes on.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **runner_args)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True, backlog=backlog)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = runner.addresses  # (host, port) or, for IPv6, (host, port, flowinfo, scope_id)
    return runner, int(addresses[0][1]) if addresses else port


async def close(runner: web.AppRunner | None) -> None:
    """Stop accepting, let requests in flight finish (bounded by the runner's shutdown_timeout), close every
    connection."""
    if runner is not None:
        await runner.cleanup()
