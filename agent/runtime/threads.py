"""Worker threads: the agent's own (process lookups, config reads) apart from those of name lookups.

A check of a host whose DNS hangs leaves a thread blocked in getaddrinfo for as long as the resolver
waits; those threads come from the loop's default executor. The agent's own work, on which the app's
liveness depends, runs on this separate pool so that a dependency's lookups can never starve it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
DEFAULT_EXECUTOR_THREADS = 32  # room for lookups stuck past their check's timeout

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _internal() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="agent-internal")
    return _pool


async def run_internal(func: Callable[..., T], *args: object) -> T:
    """Run `func(*args)` on the agent's own threads."""
    return await asyncio.get_running_loop().run_in_executor(_internal(), func, *args)


def install_default_executor(loop: asyncio.AbstractEventLoop) -> None:
    """Give the loop a default executor with room for stuck lookups (the stock one has cpu+4 threads)."""
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=DEFAULT_EXECUTOR_THREADS,
                                                                    thread_name_prefix="lookup"))


def shutdown() -> None:
    """Stop taking work; threads stuck in a syscall are left to die with the process."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None
