"""The mutating admission webhook: HTTPS, `POST /inject`, `GET /healthz`, `GET /metrics`, certificates that follow their files.

The decision itself is agent.webhook.admission's; this module is the server around it: TLS, body limit, logs,
metrics, and the process's lifetime (SIGTERM or SIGINT stops it cleanly).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from agent import listen
from agent.config import ANY_HOST
from agent.inject import InjectError, Options, Outcome, inject_template  # the same code path as `inject`
from agent.logs import event
from agent.units import format_address
from agent.webhook.admission import BadReview, Decision, Mutate, Review, ReviewResult, decide, parse
from agent.webhook.kubelets import OldestKubelet

log = logging.getLogger("agent.webhook")

# The API server stores objects of up to 1.5 MiB (etcd's limit) and this webhook is registered for CREATE,
# whose review carries the object alone; an UPDATE review would add oldObject. Two such objects in JSON plus
# the review's envelope (user, groups, options) stay under 4 MiB, so no review the API server sends for a
# valid Pod is refused, and a runaway client cannot make the webhook hold more than 4 MiB per request.
MAX_BODY = 4 * 2**20
# The API server keeps its connections to a webhook open between reviews (Go's idle timeout is 90 s).
KEEPALIVE_SECONDS = 75.0
# In-flight reviews get this long to finish once the webhook is told to stop.
SHUTDOWN_SECONDS = 5.0
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
JSON_HEADERS = {"Content-Type": "application/json"}
TEXT = "text/plain"


@dataclass(frozen=True)
class Settings:
    """What `sidecar-agent webhook` was asked for, parsed and checked."""

    cert: str
    key: str
    host: str = ANY_HOST  # every address, IPv4 and IPv6: the API server calls the Service's pod IPs
    port: int = 8443
    options: Options = field(default_factory=Options)  # the image and the Kubernetes version, as `inject` takes them


class CertificateError(Exception):
    """The certificate or key cannot be loaded."""


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS server context holding the certificate chain and key of these files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load the certificate {cert} with the key {key}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    return context


class Certificates:
    """The listener's TLS context, and a fresh one whenever the certificate or key file changes.

    Every new connection's ClientHello stats the two files (a few microseconds, no reading) and, when
    they changed (a Secret volume swaps them as a whole), loads them into a new context for this and
    later connections. Open connections keep the certificate they started with. A pair that fails to
    load (a half-written rotation) leaves the last good one in service until the files change again.
    """

    def __init__(self, cert: str, key: str, on_reload: Callable[[bool], None] = lambda ok: None) -> None:
        self.cert, self.key, self.on_reload = cert, key, on_reload
        self._stamp = self._stat()
        self.current = server_context(cert, key)
        # The listener's own context serves until the first change; a fresh one never needs the callback.
        self.listening = self.current
        self.listening.sni_callback = self._hello  # called for every ClientHello, with or without SNI
        self._failed: object = None

    def _stat(self) -> object:
        try:
            stats = [os.stat(path) for path in (self.cert, self.key)]
        except OSError:
            return None
        return tuple((s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def _hello(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
               context: ssl.SSLContext) -> None:
        self.refresh()
        connection.context = self.current

    def refresh(self) -> None:
        """Load the files again if they changed since the last load (or the last failed one)."""
        stamp = self._stat()
        if stamp is None or stamp == self._stamp or stamp == self._failed:
            return
        try:
            fresh = server_context(self.cert, self.key)
        except CertificateError as exc:
            self._failed = stamp
            event(log, logging.ERROR, f"the new TLS certificate cannot be loaded, still serving the previous one: {exc}")
            self.on_reload(False)
            return
        self.current, self._stamp, self._failed = fresh, stamp, None
        event(log, logging.INFO, f"reloaded the TLS certificate from {self.cert}", cert=self.cert)
        self.on_reload(True)


class WebhookMetrics:
    """The webhook's own registry: reviews by result, their duration, refused requests, certificate reloads."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # _created series add nothing here
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.reviews = Counter("sidecar_webhook_reviews", "Admission reviews answered, by result; dry-run reviews "
                               "apply nothing and are counted apart.", ["result", "dry_run"], registry=self.registry)
        self.bad_requests = Counter("sidecar_webhook_bad_requests", "Requests refused without a review (4xx), by "
                                    "HTTP status.", ["code"], registry=self.registry)
        self.duration = Histogram("sidecar_webhook_review_duration_seconds", "Time to answer one admission review.",
                                  buckets=BUCKETS, registry=self.registry)
        self.reloads = Counter("sidecar_webhook_certificate_reloads", "Reloads of the TLS certificate after its files "
                               "changed, by result.", ["result"], registry=self.registry)
        self.node_reads = Counter("sidecar_webhook_node_reads", "Reads of the nodes' kubelet versions under "
                                  "--kubernetes-version auto, by result.", ["result"], registry=self.registry)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class WebhookServer:
    """An aiohttp AppRunner and TLS TCPSite answering admission reviews with `mutate`."""

    def __init__(self, certificates: Certificates, mutate: Mutate, refusals: tuple[type[Exception], ...],
                 metrics: WebhookMetrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self.certificates, self.mutate, self.refusals = certificates, mutate, refusals
        self.metrics, self.clock = metrics, clock
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.router.add_post("/inject", self.inject)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/metrics", self.get_metrics)
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    async def inject(self, request: web.Request) -> web.Response:
        started = self.clock()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.bad_requests.labels("413").inc()
            event(log, logging.WARNING, f"refused a review from {request.remote}: the body is over {MAX_BODY} bytes")
            raise
        try:
            review = parse(body)
        except BadReview as exc:
            self.metrics.bad_requests.labels("400").inc()
            event(log, logging.WARNING, f"refused a malformed review from {request.remote}: {exc}")
            return web.Response(status=400, text=f"not an AdmissionReview of a Pod: {exc}\n", content_type=TEXT)
        try:
            decision = decide(review, self.mutate, self.refusals)
        except Exception:  # a bug in the mutation fails this review (500), never the server
            log.exception("the injection failed on pod %s (review %s)", review.name, review.uid)
            self.metrics.reviews.labels(ReviewResult.ERROR.value, _flag(review.dry_run)).inc()
            return web.Response(status=500, text="internal error in the injection\n", content_type=TEXT)
        self._record(review, decision)
        self.metrics.duration.observe(self.clock() - started)
        return web.Response(body=json.dumps(decision.body, separators=(",", ":")).encode(), headers=JSON_HEADERS)

    def _record(self, review: Review, decision: Decision) -> None:
        """Count and log one decision. A dry run applies nothing: counted apart, logged as what would happen."""
        self.metrics.reviews.labels(decision.result.value, _flag(review.dry_run)).inc()
        fields = {"pod": review.name, "uid": review.uid, "dry_run": review.dry_run, "result": decision.result.value}
        if decision.result in (ReviewResult.INJECTED, ReviewResult.CHANGED):
            done = "dry run: would inject" if review.dry_run else "injected"
            event(log, logging.INFO, f"{done} the agent into pod {review.name}"
                  + "".join(f"; {w}" for w in decision.warnings), **fields)
        elif decision.result is ReviewResult.REFUSED:
            done = "dry run: would refuse" if review.dry_run else "refused"
            event(log, logging.WARNING, f"{done} pod {review.name}: {decision.message}", **fields)
        else:
            log.debug("pod %s left unchanged (%s)", review.name, decision.result)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", content_type=TEXT)

    async def get_metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def start(self, host: str, port: int) -> None:
        """Bind and serve over TLS; `port` 0 picks a free one, readable afterwards from `self.port`."""
        self.runner, host, self.port = await listen.start(self.app, host, port, ssl_context=self.certificates.listening,
                                                          shutdown_timeout=SHUTDOWN_SECONDS,
                                                          keepalive_timeout=KEEPALIVE_SECONDS)
        event(log, logging.INFO, f"webhook serving on https://{format_address(host, self.port)}/inject",
              listen=format_address(host, self.port))

    async def close(self) -> None:
        """Stop accepting, let in-flight reviews finish (bounded), close every connection."""
        runner, self.runner = self.runner, None
        await listen.close(runner)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def injection(settings: Settings, kubelets: OldestKubelet | None = None) -> tuple[Mutate, tuple[type[Exception], ...]]:
    """The production mutation: agent.inject's, with the image and Kubernetes version of the settings, or (`auto`)
    the oldest kubelet's version as `kubelets` knows it at each review."""
    options = settings.options

    def mutate(template: Mapping[str, Any]) -> Outcome:
        if kubelets is None:
            return inject_template(template, options, kind="Pod")
        chosen = kubelets.current
        return inject_template(template, dataclasses.replace(options, kubernetes_version=chosen.version,
                                                             kubernetes_source=chosen.source), kind="Pod")

    return mutate, (InjectError,)


def _log_end(task: asyncio.Task[None]) -> None:
    """A background task that ended on its own, not by the webhook's cancel, is a bug: say so."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the task %s failed; injections keep the last version it set", task.get_name(),
                  exc_info=task.exception())


async def serve(settings: Settings, mutate: Mutate, refusals: tuple[type[Exception], ...],
                kubelets: OldestKubelet | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then stop cleanly; returns the exit code. With `kubelets` (`auto`), a task
    owned here keeps its version current: started first, cancelled and awaited on the way out."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    metrics = WebhookMetrics()
    certificates = Certificates(settings.cert, settings.key,
                                on_reload=lambda ok: metrics.reloads.labels("success" if ok else "failure").inc())
    server = WebhookServer(certificates, mutate, refusals, metrics)
    received: list[str] = []

    def on_signal(signum: int) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    reader: asyncio.Task[None] | None = None
    if kubelets is not None:
        kubelets.on_read = lambda ok: metrics.node_reads.labels("success" if ok else "failure").inc()
        reader = asyncio.create_task(kubelets.run(), name="kubelet-versions")
        reader.add_done_callback(_log_end)
    try:
        await server.start(settings.host, settings.port)
        await stop.wait()
        event(log, logging.INFO, f"received {received[0]}, stopping the webhook", signal=received[0])
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure was logged when it happened
                await reader
        await server.close()  # the handlers stay meanwhile: a second signal changes nothing
        # Straight to SIG_IGN rather than the default action, which a late signal would turn into the exit code;
        # the caller ends the process right after (cli._run_loop).
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
    event(log, logging.INFO, "webhook stopped")
    return 0
