"""The HTTP listener: probe answers from the cache, /status, /metrics and heartbeats."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from agent import listen
from agent.config import ANY_HOST
from agent.logs import event
from agent.probes import HOOK_WINDOW, Probe
from agent.runtime.health import Answer, Health
from agent.runtime.metrics import Metrics
from agent.runtime.tasks import TaskKind, Tasks
from agent.units import format_address, format_duration, is_loopback_host

log = logging.getLogger("agent.server")
TEXT = "text/plain"
TEXT_HEADERS = {"Content-Type": "text/plain; charset=utf-8"}


HOOK_PROBES = (Probe.LIVENESS, Probe.STARTUP)  # the probes whose failure makes the kubelet kill one container
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PrestopWait(Protocol):
    """What /prestop needs of the shutdown sequence (agent.runtime.shutdown.Shutdown)."""

    @property
    def running(self) -> bool: ...

    async def wait_for_prestop(self, *, bounded: bool = False) -> str | None: ...

    async def begins_within(self, seconds: float) -> bool: ...


class Controls(Protocol):
    """What the admin endpoints may ask of the agent."""

    @property
    def shutdown(self) -> PrestopWait: ...

    def trigger(self, reason: str, *, until_sigterm: bool = False) -> None: ...

    def container_restart(self, hook: str, reason: str) -> None: ...

    async def pod_deleted(self) -> bool | None: ...

    def set_drained(self, drained: bool) -> None: ...

    async def reload(self, source: str) -> tuple[bool, str]: ...


class ProbeServer:
    """An aiohttp AppRunner and TCPSite on one address; knows its bound port and closes cleanly."""

    def __init__(self, health: Health, metrics: Metrics, *, status: Callable[[], Awaitable[dict[str, Any]]],
                 agent_live: Callable[[], list[str]], heartbeats: dict[str, float], controls: Controls,
                 tasks: Tasks, token: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.health, self.metrics, self.status, self.agent_live = health, metrics, status, agent_live
        self.tasks = tasks
        self.controls, self.token = controls, token
        self.heartbeats, self.clock = heartbeats, clock
        self.heartbeat_checks = {s.name for s in health.specs if s.type == "heartbeat"}
        self.app = web.Application(client_max_size=64 * 1024)
        self._routes(self.app.router)
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        # The last status answered on each liveness and startup path ((probe, None) for /livez, (probe, NAME) for
        # /livez/NAME): the kubelet kills a container right after its probe got failures from here, so a preStop
        # hook that comes while the last answer was a failure is that container's restart, not a pod stop.
        self.answered: dict[tuple[str, str | None], int] = {}
        self.hooks_held = 0  # preStop hooks (/prestop, /prestop/wait) being held now, for /status

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
        recorded = probe in HOOK_PROBES  # decided once, not per request

        async def handle(request: web.Request) -> web.Response:
            # A cache read and nothing else: no I/O, no lock, on the probe path.
            now = self.clock()
            if not request.query_string:
                answer = self.health.answer(probe, now)
            else:
                query = request.query
                answer = self.health.evaluate(probe, now, verbose="verbose" in query, exclude=query.getall("exclude", []))
            self.metrics.count_probe(probe, answer.status)
            if recorded:
                self.answered[(probe, None)] = answer.status
            return _text(answer)
        return handle

    def _one_handler(self, probe: str) -> Callable[[web.Request], Any]:
        recorded = probe in HOOK_PROBES

        async def handle(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            answer = self.health.evaluate_one(probe, name, self.clock())
            if answer is None:
                return web.Response(status=404, text=f"no {probe} check named {name[:80]!r}\n", content_type=TEXT)
            self.metrics.count_probe(probe, answer.status)
            if recorded:
                self.answered[(probe, name)] = answer.status
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

    def failing_answer(self, request: web.Request) -> str | None:
        """Which liveness or startup answer of the hook's container is failing (None: none is).

        Failing: the last answer given on that path was a failure (the kubelet acts on what it was told) and the
        answer still is one (a blip that has passed since, with the kubelet's threshold not reached, is no kill).
        The hook names its container's checks with `?check=NAME` (repeatable; inject writes them), meaning the
        answers on /livez/NAME and /startupz/NAME; without any, the answers on /livez and /startupz count.
        """
        names: list[str | None] = list(request.query.getall("check", [])) or [None]
        now = self.clock()
        for name in names:
            for probe in HOOK_PROBES:
                status = self.answered.get((probe, name))
                if status is None or status < 400:
                    continue
                current = self.health.answer(probe, now) if name is None else self.health.evaluate_one(probe, name, now)
                if current is not None and current.status >= 400:
                    path = f"/{probe.path}" + (f"/{name}" if name else "")
                    return f"the last {probe.value} answer on {path} was {status}, and it still fails"
        return None

    def _restart(self, hook: str, reason: str) -> web.Response:
        self.controls.container_restart(hook, reason)
        return web.Response(text=f"container restart, not a pod stop: {reason}; nothing to drain\n", content_type=TEXT)

    async def _restart_reason(self, request: web.Request) -> str | None:
        """Why a hook that came before any stop is a container restart: its container's liveness or startup answer
        is failing, and the API (when the agent can ask it) shows no deletion, which outranks the probes."""
        if self.controls.shutdown.running:
            return None
        failing = self.failing_answer(request)
        if failing is None or await self.controls.pod_deleted() is True:
            return None
        return failing

    async def prestop(self, request: web.Request) -> web.Response:
        """Start the sequence and hold the kubelet's preStop hook until the app is stopped (or the drain is over);
        a hook that comes while the app's liveness or startup answer is failing is a container restart: answered
        at once, nothing started."""
        restart = await self._restart_reason(request)
        if restart is not None:
            return self._restart("GET /prestop", restart)
        self.controls.trigger("GET /prestop")
        self.hooks_held += 1
        try:
            # After the trigger, so readiness fails without waiting on the API: whether the pod is being deleted
            # (with shutdown.endpoints and API access), for /status and the log; not read again once it was seen.
            await self.controls.pod_deleted()
            outcome = await self.controls.shutdown.wait_for_prestop()
        finally:
            self.hooks_held -= 1
        return web.Response(text=f"shutdown: {outcome}\n", content_type=TEXT)

    async def prestop_wait(self, request: web.Request) -> web.Response:
        """Hold an app container's preStop hook until the ordered stop has drained (or stopped the app).

        It triggers nothing, so it needs no token: the sequence starts from the agent's SIGTERM or its own preStop,
        which on a pod deletion the kubelet starts together with this hook. A hook that comes while the app's
        liveness or startup answer is failing, or when no stop begins within HOOK_WINDOW, is the kubelet killing one
        container (a failed probe): answered at once, so the restart is not held. A stop that has begun is waited
        for at most the grace period, which bounds a hook anyway (then 503).
        """
        shutdown = self.controls.shutdown
        note = ""
        restart = await self._restart_reason(request)
        if restart is not None:
            return self._restart("GET /prestop/wait", restart)
        self.hooks_held += 1
        try:
            if not shutdown.running:
                came = self.clock()
                if not await shutdown.begins_within(HOOK_WINDOW):
                    return self._restart("GET /prestop/wait", f"no stop began within {format_duration(HOOK_WINDOW)}")
                # How far behind the hook the stop began: the figure HOOK_WINDOW is sized from (bench/bench_hooks.py).
                note = f" (the stop began {self.clock() - came:.3f}s after this hook)"
            outcome = await shutdown.wait_for_prestop(bounded=True)
        finally:
            self.hooks_held -= 1
        if outcome is None:
            return web.Response(status=503, text="the ordered stop did not drain within the grace period\n",
                                content_type=TEXT)
        return web.Response(text=f"shutdown: {outcome}{note}\n", content_type=TEXT)

    async def quitquitquit(self, request: web.Request) -> web.Response:
        """Start the sequence and return. `?exit=sigterm` (a native sidecar's own preStop, `sidecar-agent stop`):
        after the sequence keep serving until SIGTERM, which the kubelet sends once the app containers have exited."""
        until_sigterm = request.query.get("exit") == "sigterm"
        self.controls.trigger("POST /quitquitquit", until_sigterm=until_sigterm)
        return web.Response(text="shutting down" + (", then serving until SIGTERM" if until_sigterm else "") + "\n",
                            content_type=TEXT)

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
        self.runner, host, self.port = await listen.start(
            self.app, host, port, shutdown_timeout=1.0, keepalive_timeout=15.0,
            max_line_size=8190, max_field_size=8190, max_headers=128)
        where = format_address(host, self.port)
        event(log, logging.INFO, f"serving probes on {where}" + (" (IPv4 and IPv6)" if host == ANY_HOST else ""),
              listen=where)

    async def close(self) -> None:
        runner, self.runner = self.runner, None
        await listen.close(runner)


def _text(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, body=answer.data, headers=TEXT_HEADERS)

