"""`--kubernetes-version auto`: the oldest kubelet of the cluster, read from the nodes at start and again every
minute while the webhook runs; the safe fallback (agent.kube.versions.FALLBACK) until a read succeeds and whenever
one fails. Every change is logged; each read is counted by result."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from agent.kube.nodes import NodeListError
from agent.kube.versions import FALLBACK, Chosen, Source, mode, oldest
from agent.logs import event

log = logging.getLogger("agent.webhook")

REFRESH_SECONDS = 60.0  # a node that joins with an older kubelet is seen within a minute
RETRY_SECONDS = 10.0  # after a failed read: the fallback is safe, but the right mode should come back soon

Lister = Callable[[], Awaitable[list[tuple[str, str]]]]


class OldestKubelet:
    """The version injections use under `auto`, kept current by `run` (a task the webhook owns)."""

    def __init__(self, lister: Lister, on_read: Callable[[bool], None] = lambda ok: None) -> None:
        self.lister, self.on_read = lister, on_read
        self.current = Chosen(FALLBACK, Source.FALLBACK)
        self._problem: str | None = None  # the last failure logged

    def _set(self, chosen: Chosen, why: str) -> None:
        if chosen == self.current:
            return
        before, self.current = self.current, chosen
        event(log, logging.WARNING if chosen.source is Source.FALLBACK else logging.INFO,
              f"injecting for Kubernetes {chosen.text} ({mode(chosen.version).value}) instead of "
              f"{before.text} ({before.source.value}): {why}",
              kubernetes=chosen.text, kubernetes_from=chosen.source.value)

    async def read(self) -> bool:
        """List the nodes once and update `current`; False (and the fallback) when that fails."""
        try:
            kubelets = await self.lister()
            version = oldest(kubelets)
        except (NodeListError, ValueError) as exc:
            self._failed(str(exc))
            return False
        except Exception as exc:  # a bug in the reader must not end the task: the fallback stays safe
            log.exception("reading the nodes' kubelet versions failed")
            self._failed(f"internal error: {type(exc).__name__}: {exc}")
            return False
        self.on_read(True)
        self._problem = None
        self._set(Chosen(version, Source.NODES), f"the oldest kubelet of {len(kubelets)} nodes")
        return True

    def _failed(self, problem: str) -> None:
        self.on_read(False)
        if self.current.source is not Source.FALLBACK:
            self._set(Chosen(FALLBACK, Source.FALLBACK), f"the nodes cannot be read ({problem}); the fallback "
                      "works on every kubelet")
        elif problem != self._problem:  # once per new problem: a read every 10 s that keeps failing is only counted
            event(log, logging.WARNING, f"the nodes cannot be read, injecting for Kubernetes {FALLBACK[0]}.{FALLBACK[1]} "
                  f"(the fallback, which works on every kubelet) until they can: {problem}",
                  kubernetes=self.current.text, kubernetes_from=self.current.source.value)
        self._problem = problem

    async def run(self) -> None:
        """Read, then read again every REFRESH_SECONDS (RETRY_SECONDS after a failure), until cancelled."""
        while True:
            ok = await self.read()
            await asyncio.sleep(REFRESH_SECONDS if ok else RETRY_SECONDS)
