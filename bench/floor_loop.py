"""The floor for bench_cost.py: a minimal asyncio loop doing one check's work on the agent's schedule.

`python bench/floor_loop.py KIND COUNT INTERVAL TARGET` runs COUNT tasks, each doing KIND's work every INTERVAL
seconds at a random phase of the interval (as the agent spreads its checks), the naive way:

- file: `await asyncio.to_thread(os.stat, TARGET)`
- tcp: `asyncio.open_connection(host, port)`, then close and `wait_closed()`
- http: a GET of TARGET on a new `aiohttp.ClientSession`, the body read, the session closed
- hang: the same GET of a server that never answers, bounded by `asyncio.wait_for(..., 1.0)`
- exec: `create_subprocess_exec(*TARGET.split())` and `wait()`
- redis: PING on one kept `redis.asyncio` connection to TARGET (a redis:// URL)
- postgres: `SELECT 1` on one kept asyncpg connection to TARGET (a DSN)
- grpc: a health `Check` on one kept `grpc.aio` channel to TARGET (host:port)
- mix: 400 tcp, 400 file, 100 http and 100 hang at once; TARGET is `tcp_address,file_path,http_url,hang_url`

`python bench/floor_loop.py imports [clients]` only imports the declared runtime stack (and with `clients`
the redis and postgres clients) and sleeps: the memory floor.

It prints `ready` once started and `runs N` (the runs completed so far) on SIGUSR1; SIGTERM ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable

Work = Callable[[], Awaitable[object]]
runs = 0


async def every(interval: float, work: Work) -> None:
    global runs
    await asyncio.sleep(random.uniform(0, interval))
    next_at = time.monotonic()
    while True:
        with contextlib.suppress(Exception):  # a failed run is still a run
            await work()
        runs += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def file_work(path: str) -> Work:
    async def work() -> object:
        return await asyncio.to_thread(os.stat, path)
    return work


def tcp_work(address: str) -> Work:
    host, _, port = address.rpartition(":")

    async def work() -> object:
        _, writer = await asyncio.open_connection(host, int(port))
        writer.close()
        await writer.wait_closed()
        return None
    return work


def http_work(url: str, limit: float | None = None) -> Work:
    import aiohttp

    async def get() -> object:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return await response.read()

    async def work() -> object:
        return await (asyncio.wait_for(get(), limit) if limit else get())
    return work


def exec_work(command: str) -> Work:
    async def work() -> object:
        proc = await asyncio.create_subprocess_exec(*command.split())
        return await proc.wait()
    return work


async def redis_work(url: str) -> Work:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    await client.ping()

    async def work() -> object:
        return await client.ping()
    return work


async def postgres_work(dsn: str) -> Work:
    import asyncpg

    connection = await asyncpg.connect(dsn)

    async def work() -> object:
        return await connection.fetchval("SELECT 1")
    return work


async def grpc_work(address: str) -> Work:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.aio.insecure_channel(address)
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")

    async def work() -> object:
        return await stub.Check(request, timeout=1.0)
    return work


async def main(kind: str, count: int, interval: float, target: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(f"runs {runs}", flush=True))
    works: list[Work] = []
    if kind == "mix":
        tcp, path, url, hang = target.split(",")
        works = [tcp_work(tcp)] * 400 + [file_work(path)] * 400 + [http_work(url)] * 100 + [http_work(hang, 1.0)] * 100
    else:
        make: dict[str, Callable[[str], Work]] = {"file": file_work, "tcp": tcp_work, "http": http_work,
                                                  "hang": lambda url: http_work(url, 1.0), "exec": exec_work}
        if kind in make:
            works = [make[kind](target)] * count
        else:
            connect = {"redis": redis_work, "postgres": postgres_work, "grpc": grpc_work}[kind]
            works = [await connect(target) for _ in range(count)]  # one kept connection each, as the checks keep
    tasks = [asyncio.create_task(every(interval, work)) for work in works]
    print("ready", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def imports_only(clients: bool) -> None:
    import aiohttp.web  # noqa: F401
    import prometheus_client  # noqa: F401
    import psutil  # noqa: F401
    import yaml  # noqa: F401
    if clients:
        import asyncpg  # noqa: F401
        import redis.asyncio  # noqa: F401
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    if sys.argv[1] == "imports":
        imports_only(sys.argv[2:] == ["clients"])
    else:
        asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
