"""Prometheus metrics: counters fed by the engine and server, gauges read from the cache at scrape time."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from agent.config import CheckSpec
from agent.kube.drain import EndedBy
from agent.probes import Probe
from agent.process.monitor import AppMonitor
from agent.runtime.health import Health, Outcome, Result
from agent.runtime.phases import Phase
from agent.runtime.shutdown import ShutdownOutcome
from agent.runtime.tasks import TaskKind

DRAIN_BUCKETS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class MetricDef:
    """One metric as a scrape shows it (a counter's name ends in _total): the instruments and docs/metrics.md read it."""

    name: str
    type: str  # counter, gauge or histogram
    help: str
    labels: tuple[str, ...] = ()


METRICS: dict[str, MetricDef] = {m.name: m for m in (
    MetricDef("sidecar_check_up", "gauge", "1 when the check passes, 0 when it fails or has no verdict yet.",
              ("check", "type")),
    MetricDef("sidecar_check_duration_seconds", "histogram", "How long each check run took.", ("check",)),
    MetricDef("sidecar_check_runs_total", "counter", "Check runs by result.", ("check", "result")),
    MetricDef("sidecar_check_transitions_total", "counter", "Times a check flipped between passing and failing.",
              ("check",)),
    MetricDef("sidecar_probe_up", "gauge", "1 when the probe answers 200.", ("probe",)),
    MetricDef("sidecar_probe_requests_total", "counter", "Probe requests answered, by probe and status code.",
              ("probe", "code")),
    MetricDef("sidecar_phase", "gauge", "1 for the agent's current lifecycle phase.", ("phase",)),
    MetricDef("sidecar_app_up", "gauge", "1 when the app process was found and is not a zombie."),
    MetricDef("sidecar_app_restarts_total", "counter", "Times the app process was seen replaced by a new one."),
    MetricDef("sidecar_app_resident_memory_bytes", "gauge", "The app's resident memory."),
    MetricDef("sidecar_app_cpu_seconds_total", "counter", "User and system CPU time of the app process."),
    MetricDef("sidecar_app_threads", "gauge", "Threads of the app process."),
    MetricDef("sidecar_app_open_fds", "gauge", "Open file descriptors of the app process."),
    MetricDef("sidecar_shutdown_outcome_total", "counter", "How shutdown sequences ended (each outcome is explained "
              "in docs/shutdown.md).", ("outcome",)),
    MetricDef("sidecar_shutdown_drain_seconds", "histogram", "How long each drain lasted, from the stop's trigger to "
              "its end (before any wait for connections), by what ended it: endpoints (the pod left its EndpointSlices, "
              "plus the margin), min, or timer (drain_delay).", ("ended_by",)),
    MetricDef("sidecar_shutdown_endpoints_up", "gauge", "1 while the agent watches the pod's EndpointSlices and the "
              "drain follows them; 0 when the drain is the timer (shutdown.endpoints off, or no API access: see "
              "/status)."),
    MetricDef("sidecar_poller_restarts_total", "counter", "Check pollers that died and were restarted.", ("check",)),
    MetricDef("sidecar_event_loop_lag_seconds", "gauge", "How late the agent's event loop woke up, "
              "the worst of the last few seconds."),
    MetricDef("sidecar_config_reloads_total", "counter", "Config reloads that were applied."),
    MetricDef("sidecar_config_reload_failures_total", "counter", "Config reloads refused (the old config kept running)."),
    MetricDef("sidecar_task_failures_total", "counter", "Owned background tasks that raised, by kind; each failure is "
              "logged with the task's name and traceback.", ("task",)),
)}
# The values a label can take, where the agent fixes them (for the docs; `check` and `type` come from the config).
LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "result": tuple(o.value for o in Outcome),
    "probe": tuple(p.value for p in Probe),
    "phase": tuple(p.value for p in Phase),
    "outcome": tuple(ShutdownOutcome),
    "task": tuple(k.value for k in TaskKind),
    "ended_by": tuple(e.value for e in EndedBy),
}


def _family(name: str, value: float | None = None) -> GaugeMetricFamily | CounterMetricFamily:
    """A scrape-time family for the collector, named and described by its METRICS entry."""
    d = METRICS[name]
    cls = CounterMetricFamily if d.type == "counter" else GaugeMetricFamily
    if value is None:
        return cls(d.name, d.help, labels=list(d.labels))
    return cls(d.name, d.help, value=value)


def _counter(name: str, registry: CollectorRegistry) -> Counter:
    d = METRICS[name]
    return Counter(d.name.removesuffix("_total"), d.help, d.labels, registry=registry)


class StateCollector:
    """Reads check, probe, phase, app and endpoints-watch state from the cache whenever Prometheus scrapes."""

    def __init__(self, health: Health, app: Callable[[], AppMonitor | None], clock: Callable[[], float],
                 endpoints_live: Callable[[], bool]) -> None:
        self.health, self.app, self.clock, self.endpoints_live = health, app, clock, endpoints_live

    def collect(self) -> Iterator[Metric]:
        now, slack = self.clock(), self.health.slack()
        up = _family("sidecar_check_up")
        for state in self.health.states.values():
            up.add_metric([state.spec.name, state.spec.type], 1.0 if state.verdict(now, slack)[0] is True else 0.0)
        yield up
        probe = _family("sidecar_probe_up")
        for name in Probe:
            probe.add_metric([name], 1.0 if self.health.answer(name, now).status == 200 else 0.0)
        yield probe
        phase = _family("sidecar_phase")
        for p in Phase:
            phase.add_metric([p.value], 1.0 if self.health.lifecycle.phase is p else 0.0)
        yield phase
        yield _family("sidecar_shutdown_endpoints_up", 1.0 if self.endpoints_live() else 0.0)
        yield from self._app_metrics()

    def _app_metrics(self) -> Iterator[Metric]:
        app = self.app()
        if app is None:
            return
        sample = app.sample
        yield _family("sidecar_app_up", 1.0 if sample and sample.status != "zombie" else 0.0)
        yield _family("sidecar_app_restarts_total", app.restarts)
        if sample is None:
            return
        yield _family("sidecar_app_resident_memory_bytes", sample.rss)
        yield _family("sidecar_app_cpu_seconds_total", sample.cpu_seconds)
        yield _family("sidecar_app_threads", sample.threads)
        yield _family("sidecar_app_open_fds", sample.fds)


@dataclass(frozen=True)
class _CheckChildren:
    duration: Any
    transitions: Any
    runs: dict[Outcome, Any]


class Metrics:
    """The agent's own registry and the instruments the engine and server update."""

    def __init__(self, health: Health, app: Callable[[], AppMonitor | None], clock: Callable[[], float],
                 registry: CollectorRegistry | None = None, endpoints_live: Callable[[], bool] = lambda: False) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the _created series only add noise for a sidecar scraped every few seconds
        self.registry = registry or CollectorRegistry()
        r = self.registry
        duration = METRICS["sidecar_check_duration_seconds"]
        self.check_duration = Histogram(duration.name, duration.help, duration.labels, registry=r, buckets=BUCKETS)
        self.check_runs = _counter("sidecar_check_runs_total", r)
        self.check_transitions = _counter("sidecar_check_transitions_total", r)
        self.probe_requests = _counter("sidecar_probe_requests_total", r)
        self.shutdowns = _counter("sidecar_shutdown_outcome_total", r)
        self.poller_restarts = _counter("sidecar_poller_restarts_total", r)
        lag = METRICS["sidecar_event_loop_lag_seconds"]
        self.loop_lag = Gauge(lag.name, lag.help, registry=r)
        self.reloads = _counter("sidecar_config_reloads_total", r)
        self.reload_failures = _counter("sidecar_config_reload_failures_total", r)
        self.task_failures = _counter("sidecar_task_failures_total", r)
        for kind in TaskKind:
            self.task_failures.labels(kind.value)
        for outcome in ShutdownOutcome:
            self.shutdowns.labels(outcome.value)
        drain = METRICS["sidecar_shutdown_drain_seconds"]
        self.drain_seconds = Histogram(drain.name, drain.help, drain.labels, registry=r, buckets=DRAIN_BUCKETS)
        for ended_by in EndedBy:
            self.drain_seconds.labels(ended_by.value)
        self._children: dict[str, _CheckChildren] = {}
        self._init_children(health.specs)
        self._probe_children: dict[tuple[str, int], Counter] = {(p, code): self.probe_requests.labels(p, str(code))
                                for p in Probe for code in (200, 503)}
        r.register(StateCollector(health, app, clock, endpoints_live))
        ProcessCollector(registry=r)

    def observe(self, spec: CheckSpec[object], result: Result, flipped: bool) -> None:
        children = self._children[spec.name]  # looked up once per check (in _init_children), not at every run
        children.duration.observe(result.duration)
        children.runs[result.outcome].inc()
        if flipped:
            children.transitions.inc()

    def _init_children(self, specs: Sequence[CheckSpec[object]]) -> None:
        """Create every labelled series up front, so that they read 0 rather than being absent."""
        for spec in specs:
            self._children[spec.name] = _CheckChildren(
                self.check_duration.labels(spec.name), self.check_transitions.labels(spec.name),
                {o: self.check_runs.labels(spec.name, o.value) for o in Outcome})
            self.poller_restarts.labels(spec.name)

    def apply(self, specs: Sequence[CheckSpec[object]], gone: Sequence[str]) -> None:
        """After a reload: drop the series of removed checks, create those of new ones."""
        for name in gone:
            self._children.pop(name, None)
            for family in (self.check_duration, self.check_transitions, self.poller_restarts):
                with contextlib.suppress(KeyError):
                    family.remove(name)
            for outcome in Outcome:
                with contextlib.suppress(KeyError):
                    self.check_runs.remove(name, outcome.value)
        self._init_children(specs)

    def count_shutdown(self, outcome: ShutdownOutcome) -> None:
        self.shutdowns.labels(outcome.value).inc()

    def count_task_failure(self, kind: TaskKind) -> None:
        self.task_failures.labels(kind.value).inc()

    def observe_drain(self, ended_by: EndedBy, seconds: float) -> None:
        self.drain_seconds.labels(ended_by.value).observe(seconds)

    def count_probe(self, probe: str, code: int) -> None:
        child = self._probe_children.get((probe, code))
        (child or self.probe_requests.labels(probe, str(code))).inc()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for (OpenMetrics or text)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
