"""Prometheus metrics: counters fed by the engine and server, gauges read from the cache at scrape time."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from agent.app import AppMonitor
from agent.config import CheckSpec
from agent.health import UNKNOWN_PASSES, Health, Outcome, Result
from agent.phases import Phase

SHUTDOWN_OUTCOMES = ("exited", "killed", "gone", "denied", "no_app", "not_relayed")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StateCollector:
    """Reads check, probe, phase and app state from the cache whenever Prometheus scrapes."""

    def __init__(self, health: Health, app: Callable[[], AppMonitor | None], clock: Callable[[], float]) -> None:
        self.health, self.app, self.clock = health, app, clock

    def collect(self) -> Iterator[Metric]:
        now, slack = self.clock(), self.health.slack()
        up = GaugeMetricFamily("sidecar_check_up", "1 when the check passes, 0 when it fails or has no verdict yet.",
                               labels=["check", "type"])
        for state in self.health.states.values():
            up.add_metric([state.spec.name, state.spec.type], 1.0 if state.verdict(now, slack)[0] is True else 0.0)
        yield up
        probe = GaugeMetricFamily("sidecar_probe_up", "1 when the probe answers 200.", labels=["probe"])
        for name in UNKNOWN_PASSES:
            probe.add_metric([name], 1.0 if self.health.answer(name, now).status == 200 else 0.0)
        yield probe
        phase = GaugeMetricFamily("sidecar_phase", "1 for the agent's current lifecycle phase.", labels=["phase"])
        for p in Phase:
            phase.add_metric([p.value], 1.0 if self.health.lifecycle.phase is p else 0.0)
        yield phase
        yield from self._app_metrics()

    def _app_metrics(self) -> Iterator[Metric]:
        app = self.app()
        if app is None:
            return
        sample = app.sample
        yield GaugeMetricFamily("sidecar_app_up", "1 when the app process was found and is not a zombie.",
                                value=1.0 if sample and sample.status != "zombie" else 0.0)
        yield CounterMetricFamily("sidecar_app_restarts", "Times the app process was seen replaced by a new one.",
                                  value=app.restarts)
        if sample is None:
            return
        yield GaugeMetricFamily("sidecar_app_resident_memory_bytes", "The app's resident memory.", value=sample.rss)
        yield CounterMetricFamily("sidecar_app_cpu_seconds", "User and system CPU time of the app process.",
                                  value=sample.cpu_seconds)
        yield GaugeMetricFamily("sidecar_app_threads", "Threads of the app process.", value=sample.threads)
        yield GaugeMetricFamily("sidecar_app_open_fds", "Open file descriptors of the app process.", value=sample.fds)


@dataclass(frozen=True)
class _CheckChildren:
    duration: Any
    transitions: Any
    runs: dict[Outcome, Any]


class Metrics:
    """The agent's own registry and the instruments the engine and server update."""

    def __init__(self, health: Health, app: Callable[[], AppMonitor | None], clock: Callable[[], float],
                 registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the _created series only add noise for a sidecar scraped every few seconds
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.check_duration = Histogram("sidecar_check_duration_seconds", "How long each check run took.",
                                        ["check"], registry=r, buckets=BUCKETS)
        self.check_runs = Counter("sidecar_check_runs", "Check runs by result.", ["check", "result"], registry=r)
        self.check_transitions = Counter("sidecar_check_transitions", "Times a check flipped between passing and failing.",
                                         ["check"], registry=r)
        self.probe_requests = Counter("sidecar_probe_requests", "Probe requests answered, by probe and status code.",
                                      ["probe", "code"], registry=r)
        self.shutdowns = Counter("sidecar_shutdown_outcome", "How shutdown sequences ended: exited (after the stop "
                                 "signal), killed (SIGKILL at stop_timeout), gone, denied (no permission to signal), "
                                 "no_app, not_relayed.", ["outcome"], registry=r)
        self.poller_restarts = Counter("sidecar_poller_restarts", "Check pollers that died and were restarted.",
                                       ["check"], registry=r)
        self.loop_lag = Gauge("sidecar_event_loop_lag_seconds", "How late the agent's event loop woke up, "
                              "the worst of the last few seconds.", registry=r)
        self.reloads = Counter("sidecar_config_reloads", "Config reloads that were applied.", registry=r)
        self.reload_failures = Counter("sidecar_config_reload_failures", "Config reloads refused (the old config "
                                       "kept running).", registry=r)
        for outcome in SHUTDOWN_OUTCOMES:
            self.shutdowns.labels(outcome)
        self._children: dict[str, _CheckChildren] = {}
        self._init_children(health.specs)
        self._probe_children = {(p, code): self.probe_requests.labels(p, str(code))
                                for p in UNKNOWN_PASSES for code in (200, 503)}
        r.register(StateCollector(health, app, clock))
        ProcessCollector(registry=r)

    def observe(self, spec: CheckSpec, result: Result, flipped: bool) -> None:
        children = self._children.get(spec.name)
        if children is None:  # the labelled children, looked up once per check rather than at every run
            children = self._children[spec.name] = _CheckChildren(
                self.check_duration.labels(spec.name), self.check_transitions.labels(spec.name),
                {o: self.check_runs.labels(spec.name, o.value) for o in Outcome})
        children.duration.observe(result.duration)
        children.runs[result.outcome].inc()
        if flipped:
            children.transitions.inc()

    def _init_children(self, specs: Sequence[CheckSpec]) -> None:
        """Create every labelled series up front, so that they read 0 rather than being absent."""
        for spec in specs:
            self.check_duration.labels(spec.name)
            self.check_transitions.labels(spec.name)
            self.poller_restarts.labels(spec.name)
            for outcome in Outcome:
                self.check_runs.labels(spec.name, outcome.value)

    def apply(self, specs: Sequence[CheckSpec], gone: Sequence[str]) -> None:
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

    def count_shutdown(self, outcome: str) -> None:
        self.shutdowns.labels(outcome).inc()

    def count_probe(self, probe: str, code: int) -> None:
        child = self._probe_children.get((probe, code))
        (child or self.probe_requests.labels(probe, str(code))).inc()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for (OpenMetrics or text)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
