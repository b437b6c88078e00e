"""The EndpointSlice watch: in-cluster credentials, list then watch over plain aiohttp, and the pod's own GET.

Imported only when `shutdown.endpoints` is configured. One owned task lists the namespace's
`discovery.k8s.io/v1` EndpointSlices (in pages), then watches them from the list's resource version with
bookmarks, feeding each event to the pure SliceTracker; a watch the server ends is resumed from the last
resource version, a 410 Gone lists again, and every other failure reconnects with a jittered backoff. While the
watch is not live (no token, 401/403, the API down or slow) the drain is the timer; the log says why once per
change, and /status and sidecar_shutdown_endpoints_up say the same.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import ssl
import sys
from asyncio import sslproto
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from agent.config import EndpointsConfig, EndpointsMode
from agent.kube.api import SERVICE_ACCOUNT, ApiServer, ApiUnavailable, in_cluster
from agent.kube.drain import Ending, timer
from agent.kube.endpoints_state import Action, PodIdentity, SliceTracker, drain_end
from agent.logs import event
from agent.runtime.tasks import TaskKind, Tasks

log = logging.getLogger("agent.endpoints")
# Another place for the service account's token, ca.crt and namespace: an agent run outside a pod, and the tests.
SERVICE_ACCOUNT_ENV = "SIDECAR_AGENT_SERVICE_ACCOUNT_DIR"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
POD = "/api/v1/namespaces/{namespace}/pods/{name}"
# Slices per list page: a namespace is read in small pieces, never held whole. The decoded page is the agent's peak
# of Python objects, and pymalloc keeps the pools it touched: pages of 50 cost ~0.5 MiB more RSS than pages of 10
# (bench/RESULTS.md). A list runs at start and after a 410 only; 10 slices is a small request for the API server.
PAGE = 10
WATCH_SECONDS = 300  # the server ends each watch after this; the next one reads the token again
REQUEST_TIMEOUT = 10.0  # a list, a watch's first answer, or a pod GET slower than this counts as the API down
POD_TIMEOUT = 2.0  # the pod GET of a preStop hook: short, the hook's time counts against the grace period
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
MAX_LINE = 16 * 1024 * 1024  # one watch event; a slice holds at most 1000 endpoints, far below this
# asyncio gives every TLS connection a 256 KiB read buffer (SSLProtocol.max_size), filled with zeros at once, and reads
# the decrypted stream in chunks of that size: 0.25-0.5 MiB of RSS for one watch. A TLS record holds at most 16 KiB,
# so a smaller buffer only means more reads for a large body.
TLS_READ_BUFFER = 16 * 1024


class WatchState(enum.Enum):
    """Where the watch stands; the drain follows the slices only while it is `watching` and synced."""

    STARTING = "starting"
    WATCHING = "watching"
    FALLBACK = "fallback"  # no API access for now: the drain is the timer
    OFF = "off"  # no credentials or no pod identity at start: the timer for good


class ApiError(Exception):
    """An answer of the API other than the one asked for."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status


class Gone(Exception):
    """410: the resource version is too old to resume from; list again."""


def api_access(env: Mapping[str, str], account: Path) -> ApiServer | str:
    """The in-cluster API server with its token and CA in place, or why there is none."""
    try:
        api = in_cluster(env, account)
    except ApiUnavailable as exc:
        return str(exc)
    for path in (Path(api.token_file), Path(api.ca_file)):
        if not path.is_file():
            return f"no service-account {path.name} at {path} (automountServiceAccountToken: false?)"
    return api


def account_namespace(account: Path) -> str | None:
    try:
        return (account / "namespace").read_text().strip() or None
    except OSError:
        return None


class EndpointsWatch:
    """The owned watch task and what the shutdown sequence asks of it (DrainSource: ending, changed)."""

    def __init__(self, cfg: EndpointsConfig, access: ApiServer | None, pod: PodIdentity | None, *,
                 reason: str | None = None, clock: Callable[[], float],
                 watch_seconds: int = WATCH_SECONDS,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.cfg, self.access, self.pod, self.clock = cfg, access, pod, clock
        self.watch_seconds, self.request_timeout = watch_seconds, request_timeout
        self.lists = self.watches = 0  # completed lists, watches answered 200: for /status and the tests
        self.tracker = SliceTracker(pod or PodIdentity(""), clock)
        self.state = WatchState.STARTING if access is not None and pod is not None else WatchState.OFF
        self.reason = reason
        self.failures = 0  # failed attempts in a row
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks: Tasks | None = None  # the owner `start` was given, which cancels and awaits the task at close
        self._session: aiohttp.ClientSession | None = None
        self._relist = True

    # -- what the shutdown sequence and /status read -------------------------------------------------------

    @property
    def live(self) -> bool:
        return self.state is WatchState.WATCHING and self.tracker.synced

    def ending(self, started: float, drain_delay: float) -> Ending:
        if not self.live:
            return timer(started, drain_delay, f"the EndpointSlices are not followed: {self.reason or 'no list yet'}")
        return drain_end(started, drain_delay, self.cfg, self.tracker)

    def changed(self) -> asyncio.Event:
        """Set at the next change of the pod's routing or of the watch's state (a fresh event after each)."""
        return self._changed

    def document(self) -> dict[str, Any]:
        """For /status: the watch's state, why it is not live, and the slices the pod is in."""
        return {"enabled": self.cfg.enabled.value, "state": self.state.value, "live": self.live,
                "reason": self.reason, "lists": self.lists, "watches": self.watches,
                "min_seconds": self.cfg.min, "margin_seconds": self.cfg.margin,
                "resource_version": self.tracker.resource_version, **self.tracker.document()}

    async def pod_deleted(self) -> bool | None:
        """Whether the API shows this pod's deletionTimestamp: True a deletion, False none (a container restart,
        or a stop that is not a deletion: node shutdown, eviction), None when the API cannot say."""
        if self.access is None or self.pod is None or self.pod.name is None:
            return None
        url = POD.format(namespace=quote(self.pod.namespace), name=quote(self.pod.name))
        try:
            async with asyncio.timeout(min(POD_TIMEOUT, self.request_timeout)):
                pod = await self._get_json(url)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            event(log, logging.WARNING, f"could not read the pod's deletionTimestamp: {_why(exc)}")
            return None
        return bool((pod.get("metadata") or {}).get("deletionTimestamp"))

    # -- lifetime -------------------------------------------------------------------------------------------

    def start(self, tasks: Tasks) -> None:
        """Start the watch task, owned by `tasks` (the agent's: a failure is logged and counted there); nothing to
        start when the feature is off for want of credentials."""
        if self.state is WatchState.OFF:
            return
        self._tasks = tasks
        self._task = tasks.start(self._run(), TaskKind.ENDPOINTS, "endpoints-watch")
        self._task.add_done_callback(self._task_done)

    async def close(self) -> None:
        """Cancel the task, await it, close the HTTP session."""
        if self._task is not None and self._tasks is not None:
            await self._tasks.cancel(self._task)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._fail(f"the watch task died ({type(exc).__name__}: {exc}): the timer from now on")

    # -- the loop -------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                if self._relist:
                    await self._list()
                    self._relist = False
                began = self.clock()
                await self._watch()  # returns when the server ends the watch (timeoutSeconds): resume at once
                if self.clock() - began > 1.0:
                    continue
                self._fail("the API ends every watch at once")  # never a busy loop against the API
            except Gone:
                self._relist = True
                self.tracker.synced = False  # the timer until the list is read again
                event(log, logging.INFO, "the EndpointSlice watch's resource version expired (410 Gone): listing "
                      "again")
                continue
            except ApiError as exc:
                self._fail(f"the API answered {exc}" + (": the service account needs the Role of "
                           "docs/shutdown.md" if exc.status == 403 else ""))
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                self._fail(f"the API is not reachable: {_why(exc)}")
            self.failures += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(self.failures - 1, 16))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: a fleet's pods do not retry at once

    async def _list(self) -> None:
        """Read every slice of the namespace, page by page, keeping only those that list the pod."""
        assert self.pod is not None
        base = SLICES.format(namespace=quote(self.pod.namespace))
        mine: list[dict[str, Any]] = []
        token = ""
        while True:
            query = f"?limit={PAGE}" + (f"&continue={quote(token)}" if token else "")
            async with asyncio.timeout(self.request_timeout):
                page = await self._get_json(base + query)
            mine.extend(obj for obj in page.get("items") or [] if self.tracker.pod_in(obj))
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                break
        self.tracker.replace(mine, str(meta.get("resourceVersion", "")))
        self.lists += 1
        self._live()
        self._notify()

    async def _watch(self) -> None:
        assert self.pod is not None
        url = (SLICES.format(namespace=quote(self.pod.namespace)) + "?watch=1&allowWatchBookmarks=true"
               f"&resourceVersion={quote(self.tracker.resource_version or '')}&timeoutSeconds={self.watch_seconds}")
        session = self._client()
        timeout = aiohttp.ClientTimeout(total=None, connect=self.request_timeout, sock_read=self.watch_seconds + 30)
        async with session.get(self._url(url), headers=self._headers(), timeout=timeout) as resp:
            if resp.status == 410:
                raise Gone
            if resp.status != 200:
                raise ApiError(resp.status, await _reason(resp))
            self.watches += 1
            self.tracker.synced = True  # resumed from the last resource version: the events missed come first
            self._live()
            self.failures = 0
            async for line in _lines(resp.content):
                before = self.tracker.version
                decoded = json.loads(line)
                if not isinstance(decoded, dict):
                    raise ValueError("a watch event that is not a JSON object")
                action = self.tracker.apply(decoded)
                if action is Action.RELIST:
                    raise Gone
                if action is Action.REWATCH:
                    raise ValueError("the watch sent an error event")
                if self.tracker.version != before:
                    self._notify()

    # -- helpers --------------------------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            assert self.access is not None
            context = _AsciiHostContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
            context.load_verify_locations(cafile=self.access.ca_file)  # the service account's CA only
            # Process-wide, set only with the feature on: every later TLS connection of this agent (an https check
            # too) reads through a 16 KiB buffer instead of 256 KiB; nothing else changes (see TLS_READ_BUFFER).
            sslproto.SSLProtocol.max_size = min(sslproto.SSLProtocol.max_size, TLS_READ_BUFFER)
            # enable_cleanup_closed: on Python < 3.12.7 asyncio leaks the socket of a TLS connection whose shutdown
            # does not complete (a watch cut off by close()); the connector aborts those when it closes.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                ssl=context, limit=4, enable_cleanup_closed=sys.version_info < (3, 12, 7)))
        return self._session

    def _url(self, path: str) -> str:
        assert self.access is not None
        return self.access.url + path

    def _headers(self) -> dict[str, str]:
        assert self.access is not None
        try:
            return self.access.headers()
        except ApiUnavailable as exc:
            raise ApiError(401, str(exc)) from None

    async def _get_json(self, path: str) -> dict[str, Any]:
        async with self._client().get(self._url(path), headers=self._headers()) as resp:
            if resp.status == 410:
                raise Gone
            if resp.status != 200:
                raise ApiError(resp.status, await _reason(resp))
            body = await resp.json()
        if not isinstance(body, dict):
            raise ValueError("the API's answer is not a JSON object")
        return body

    def _live(self) -> None:
        if self.state is not WatchState.WATCHING:
            if self.state is WatchState.FALLBACK:
                event(log, logging.INFO, "watching EndpointSlices again: the drain follows them", endpoints="watching")
            else:
                event(log, logging.INFO, f"watching the EndpointSlices of namespace {self.tracker.pod.namespace}: "
                      f"the pod is in {len(self.tracker.listings)}", endpoints="watching")
            self.state, self.reason = WatchState.WATCHING, None
            self._notify()

    def _fail(self, reason: str) -> None:
        """Fall back to the timer; said once per change of state or of the kind of reason."""
        self.tracker.synced = False  # what it holds may be stale until a list or a watch resumes
        if self.state is not WatchState.FALLBACK or _kind(reason) != _kind(self.reason or ""):
            event(log, logging.WARNING, f"the drain falls back to the timer: {reason}", endpoints="fallback")
        self.state, self.reason = WatchState.FALLBACK, reason
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class _AsciiHostContext(ssl.SSLContext):
    """An SSLContext that passes an ASCII host name (an IP address, as KUBERNETES_SERVICE_HOST is) through as it is.

    ssl encodes every server_hostname with the `idna` codec, whose first use imports encodings.idna and stringprep
    (their tables: ~0.1 MiB of RSS) for a name that is ASCII anyway. For ASCII, the codec returns the name unchanged
    (after checking its labels' lengths, which OpenSSL's own checks of SNI and of the certificate cover); any other
    name goes through the codec as before."""

    def _encode_hostname(self, hostname: str | bytes | None) -> str | None:
        if isinstance(hostname, str) and hostname.isascii():
            return hostname
        encoded: str | None = super()._encode_hostname(hostname)  # type: ignore[misc]
        return encoded


def _kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _reason(resp: aiohttp.ClientResponse) -> str:
    """The Status message of an error answer (never a header: those hold the token)."""
    try:
        body = json.loads(await resp.content.read(4096))
        return str(body.get("message") or resp.reason)
    except (ValueError, AttributeError, aiohttp.ClientError):
        return str(resp.reason)


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The watch's JSON lines, however long (aiohttp's own line reader stops at 64 KiB)."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:end], buffer[end + 1:]
            if line.strip():
                yield line
        if len(buffer) > MAX_LINE:
            raise ValueError("a watch event longer than 16 MiB")


def build(cfg: EndpointsConfig, env: Mapping[str, str], *, clock: Callable[[], float], account: Path | None = None,
          **tuning: Any) -> EndpointsWatch:
    """The watch for this pod, or an inert one saying why the drain stays the timer (logged once here).
    `account`: the service account's directory (default: $SIDECAR_AGENT_SERVICE_ACCOUNT_DIR, else the kubelet's)."""
    account = account or Path(env.get(SERVICE_ACCOUNT_ENV) or SERVICE_ACCOUNT)
    access = api_access(env, account)
    pod = PodIdentity.from_env(env, account_namespace(account))
    reason = access if isinstance(access, str) else None
    if reason is None and pod is None:
        reason = "POD_NAME or POD_IPS and POD_NAMESPACE are not set (the downward API; `inject --drain endpoints` adds them)"
    if reason is not None:
        level = logging.WARNING if cfg.enabled is EndpointsMode.ON else logging.INFO
        event(log, level, f"the drain is the timer, not the EndpointSlices: {reason}", endpoints="off")
        return EndpointsWatch(cfg, None, None, reason=reason, clock=clock)
    assert not isinstance(access, str)
    return EndpointsWatch(cfg, access, pod, clock=clock, **tuning)
