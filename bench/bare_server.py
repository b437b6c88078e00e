"""The baseline for bench_probes.py: a bare aiohttp server answering a constant "ok", nothing else.

Run as `python bench/bare_server.py --listen 127.0.0.1:PORT` (port 0 picks a free one); it prints
`serving on HOST:PORT` once it listens, and exits cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok\n", content_type="text/plain")


async def serve(host: str, port: int) -> None:
    app = web.Application()
    # The same handler on the two paths the benchmark asks for: /readyz (load) and /livez (start time).
    app.router.add_get("/readyz", ok)
    app.router.add_get("/livez", ok)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    print(f"serving on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: a free one)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(host or "127.0.0.1", int(port)))


if __name__ == "__main__":
    main()
