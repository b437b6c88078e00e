"""The HTTP listener: probe answers from the cache, /status, /metrics and heartbeats."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from agent import listener
from agent.logs import event
from agent.probes import Probe
from agent.runtime.health import Answer, Health
from agent.runtime.metrics import Metrics
from agent.runtime.tasks import TaskKind, Tasks
from agent.units import is_loopback_host

log = logging.getLogger("agent.server")
TEXT = "text/plain"
TEXT_HEADERS = {"Content-Type": "text/plain; charset=utf-8"}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PrestopWait(Protocol):
    """What /prestop needs of the shutdown sequence (agent.runtime.shutdown.Shutdown)."""

    async def wait_for_prestop(self, *, bounded: bool = False) -> str | None: ...


class Controls(Protocol):
    """What the admin endpoints may ask of the agent."""

    @property
    def shutdown(self) -> PrestopWait: ...

    def trigger(self, reason: str) -> None: ...

    def set_drained(self, drained: bool) -> None: ...

    async def reload(self, source: str) -> tuple[bool, str]: ...


class ProbeServer:
    """An aiohttp AppRunner and TCPSite on one address; knows its bound port and closes cleanly."""

    def __init__(self, health: Health, metrics: Metrics, *, status: Callable[[], Awaitable[dict[str, Any]]],
                 agent_live: Callable[[], list[str]], heartbeats: dict[str, float], controls: Controls,
                 token: str | None = None, clock: Callable[[], float] = time.monotonic,
                 tasks: Tasks | None = None) -> None:
        self.health, self.metrics, self.status, self.agent_live = health, metrics, status, agent_live
        self.tasks = tasks or Tasks(metrics.count_task_failure)
        self.controls, self.token = controls, token
        self.heartbeats, self.clock = heartbeats, clock
        self.heartbeat_checks = {s.name for s in health.specs if s.type == "heartbeat"}
        self.app = web.Application(client_max_size=64 * 1024)
        self._routes(self.app.router)
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    def _routes(self, router: web.UrlDispatcher) -> None:
        def add(method: str, path: str, handler: Handler) -> None:
            guarded = self._guarded(handler, f"server:{method} {path}")
            if method == "GET":
                router.add_get(path, guarded)  # and HEAD
            else:
                router.add_route(method, path, guarded)

        for probe in Probe:
            add("GET", f"/{probe.path}", self._probe_handler(probe))
            add("GET", f"/{probe.path}/{{name}}", self._one_handler(probe))
        add("GET", "/agent/livez", self.agent_livez)
        add("GET", "/agent/readyz", self.agent_readyz)
        add("GET", "/status", self.get_status)
        add("GET", "/metrics", self.get_metrics)
        add("POST", "/heartbeat/{name}", self.post_heartbeat)
        add("GET", "/prestop", self._admin(self.prestop))
        add("GET", "/prestop/wait", self.prestop_wait)
        add("POST", "/quitquitquit", self._admin(self.quitquitquit))
        add("POST", "/admin/drain", self._admin(self.drain))
        add("POST", "/admin/undrain", self._admin(self.undrain))
        add("POST", "/admin/reload", self._admin(self.reload))

    def _guarded(self, handler: Handler, name: str) -> Handler:
        """A handler whose unexpected exception is logged and counted as the server task's failure (aiohttp would
        log it in its own words and count nothing), and answered 500; the agent goes on."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except (web.HTTPException, ConnectionError):
                raise  # an answer aiohttp gives (413 for a body over the cap), or a client that went away
            except Exception as exc:  # noqa: BLE001 - see above
                self.tasks.failed(TaskKind.SERVER, name, exc)
                return web.Response(status=500, text="internal error; see the agent's log\n", content_type=TEXT)
        return guarded

    def _admin(self, handler: Callable[[web.Request], Awaitable[web.Response]]) -> Callable[[web.Request], Any]:
        """Guard an admin handler: refused callers get 401/403 and nothing happens."""
        async def guarded(request: web.Request) -> web.Response:
            refused = self.refuse(request)
            return refused if refused is not None else await handler(request)
        return guarded

    def _probe_handler(self, probe: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            # A cache read and nothing else: no I/O, no lock, on the probe path.
            now = self.clock()
            if not request.query_string:
                answer = self.health.answer(probe, now)
            else:
                query = request.query
                answer = self.health.evaluate(probe, now, verbose="verbose" in query, exclude=query.getall("exclude", []))
            self.metrics.count_probe(probe, answer.status)
            return _text(answer)
        return handle

    def _one_handler(self, probe: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            answer = self.health.evaluate_one(probe, name, self.clock())
            if answer is None:
                return web.Response(status=404, text=f"no {probe} check named {name[:80]!r}\n", content_type=TEXT)
            self.metrics.count_probe(probe, answer.status)
            return _text(answer)
        return handle

    async def agent_livez(self, request: web.Request) -> web.Response:
        dead = self.agent_live()
        if dead:
            return web.Response(status=503, text=f"agent unhealthy: {'; '.join(dead)}\n", content_type=TEXT)
        return web.Response(text="ok\n", content_type=TEXT)

    async def agent_readyz(self, request: web.Request) -> web.Response:
        if not self.health.first_round_done(self.clock()):
            waiting = [n for n, s in self.health.states.items() if s.last is None]
            return web.Response(status=503, text=f"first round of checks not done: {', '.join(waiting)}\n",
                                content_type=TEXT)
        return web.Response(text="ok\n", content_type=TEXT)

    async def get_status(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(await self.status(), indent=2) + "\n", content_type="application/json")

    async def get_metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def post_heartbeat(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.heartbeat_checks:
            return web.Response(status=404, text=f"no heartbeat check named {name[:80]!r}\n", content_type=TEXT)
        await request.read()  # the body means nothing, but reading it applies the 64 KiB cap (413 over it)
        self.heartbeats[name] = self.clock()
        return web.Response(text="ok\n", content_type=TEXT)

    def refuse(self, request: web.Request) -> web.Response | None:
        """None when the caller may use admin calls: from loopback, or with the configured bearer token."""
        if is_loopback_host(request.remote):
            return None
        where = f"{request.method} {request.path} from {request.remote}"
        if self.token is None:
            event(log, logging.WARNING, f"refused {where}: admin calls come from loopback unless a token is set")
            return web.Response(status=403, text="admin calls are accepted from loopback only; set admin.token_file "
                                "or admin.token_env to allow them with a bearer token\n", content_type=TEXT)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            event(log, logging.WARNING, f"refused {where}: no bearer token")
            return web.Response(status=401, text="admin calls need Authorization: Bearer <token>\n", content_type=TEXT,
                                headers={"WWW-Authenticate": 'Bearer realm="sidecar-agent"'})
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            event(log, logging.WARNING, f"refused {where}: wrong bearer token")
            return web.Response(status=403, text="wrong bearer token\n", content_type=TEXT)
        return None

    async def prestop(self, request: web.Request) -> web.Response:
        """Start the sequence and hold the kubelet's preStop hook until the app is stopped (or the drain is over)."""
        self.controls.trigger("GET /prestop")
        outcome = await self.controls.shutdown.wait_for_prestop()
        return web.Response(text=f"shutdown: {outcome}\n", content_type=TEXT)

    async def prestop_wait(self, request: web.Request) -> web.Response:
        """Hold an app container's preStop hook until the ordered stop has drained (or stopped the app).

        It triggers nothing, so it needs no token: the sequence starts from the agent's SIGTERM or its own preStop.
        A caller with no stop under way is answered 503 after the grace period, which bounds a hook anyway.
        """
        outcome = await self.controls.shutdown.wait_for_prestop(bounded=True)
        if outcome is None:
            return web.Response(status=503, text="no ordered stop under way\n", content_type=TEXT)
        return web.Response(text=f"shutdown: {outcome}\n", content_type=TEXT)

    async def quitquitquit(self, request: web.Request) -> web.Response:
        self.controls.trigger("POST /quitquitquit")
        return web.Response(text="shutting down\n", content_type=TEXT)

    async def drain(self, request: web.Request) -> web.Response:
        self.controls.set_drained(True)
        return web.Response(text="drained: readiness fails until POST /admin/undrain\n", content_type=TEXT)

    async def undrain(self, request: web.Request) -> web.Response:
        self.controls.set_drained(False)
        return web.Response(text="undrained\n", content_type=TEXT)

    async def reload(self, request: web.Request) -> web.Response:
        ok, message = await self.controls.reload("POST /admin/reload")
        return web.Response(status=200 if ok else 422, text=message + "\n", content_type=TEXT)

    async def start(self, host: str, port: int) -> None:
        """Bind and serve; `port` 0 picks a free one, readable afterwards from `self.port`."""
        # Idle keep-alive connections are closed after 15 s; the request line and each header are capped at
        # 8 KiB and a request at 128 headers, so one request's head stays under about 1 MiB.
        self.runner, self.port = await listener.start(
            self.app, host, port, backlog=1024, shutdown_timeout=1.0, keepalive_timeout=15.0,
            max_line_size=8190, max_field_size=8190, max_headers=128)
        event(log, logging.INFO, f"serving probes on {host}:{self.port}", listen=f"{host}:{self.port}")

    async def close(self) -> None:
        runner, self.runner = self.runner, None
        await listener.close(runner)


def _text(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, body=answer.data, headers=TEXT_HEADERS)

