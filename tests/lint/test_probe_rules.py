"""The probe rules on pod specs given as plain mappings: no files, no I/O."""

from __future__ import annotations

import pytest

from agent.lint import lint_objects
from agent.lint.rules_probes import AGENT_RESTART_SECONDS
from tests.lint import helpers
from tests.lint.helpers import agent, app, pod

# The helper app's preStop hook calls /prestop: with a probe the agent does not answer, the restart rules of that hook
# fire too (tests/lint/test_shutdown_rules.py); these tests look at the probe rules alone.
RESTART_RULES = ("prestop-restart-stops-agent", "prestop-restart-held")


def lint(*objects: dict[str, object]) -> list[tuple[str, str | None]]:
    return [found for found in helpers.lint(*objects) if found[0] not in RESTART_RULES]


def test_the_reference_pod_is_clean() -> None:
    assert lint(pod(app(), agent())) == []


@pytest.mark.parametrize("path", ["/readyz", "/readyz/db", "/readyz?verbose", "/readyz/"])
def test_liveness_on_the_agents_readyz_reaches_dependencies(path: str) -> None:
    spec = pod(app(livenessProbe={"httpGet": {"path": path, "port": 8686}}), agent())
    assert lint(spec) == [("liveness-dependency", "app")]


def test_liveness_on_another_containers_port_by_number() -> None:
    cache = {"name": "cache", "image": "redis:7", "ports": [{"containerPort": 6379}]}
    spec = pod({"name": "app", "image": "x", "livenessProbe": {"tcpSocket": {"port": 6379}}}, cache)
    [finding] = lint_objects([spec])
    assert (finding.rule, finding.container) == ("liveness-dependency", "app")
    assert "port 6379 belongs to container cache" in finding.message


def test_liveness_on_its_own_port_declared_or_not_is_fine() -> None:
    declared = {"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 8080}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}}
    undeclared = {"name": "app", "image": "x", "livenessProbe": {"tcpSocket": {"port": 9000}}}
    assert lint(pod(declared)) == []
    assert lint(pod(undeclared)) == []


def test_liveness_with_a_host_leaves_the_pod() -> None:
    spec = pod({"name": "app", "image": "x", "livenessProbe": {"httpGet": {"host": "10.0.0.7", "path": "/", "port": 80}}})
    assert lint(spec) == [("liveness-dependency", "app")]


@pytest.mark.parametrize(("command", "dependency"), [
    (["redis-cli", "-h", "redis", "ping"], True),
    (["redis-cli", "ping"], False),
    (["pg_isready", "-U", "postgres"], False),
    (["pg_isready", "--host=db.internal"], True),
    (["sh", "-c", "curl -fsS http://orders:8080/health || exit 1"], True),
    (["sh", "-c", "curl -fsS http://127.0.0.1:8080/health"], False),
    (["nc", "-z", "kafka", "9092"], True),
    (["grpc_health_probe", "-addr=payments:9000"], True),
    (["grpc_health_probe", "-addr=:9000"], False),
    (["nslookup", "db.internal"], True),
    (["cat", "/tmp/healthy"], False),
    (["/bin/bash", "-c", "test -f /tmp/alive && wget -q -O- http://[::1]:8686/livez"], False),
    (["sidecar-agent", "wait", "--timeout", "1s"], True),  # its default URL is the agent's /readyz
    (["sidecar-agent", "wait", "--url", "http://127.0.0.1:8686"], True),  # an address alone means its /readyz
    (["sidecar-agent", "wait", "--url=http://127.0.0.1:8686/agent/readyz"], False),
    (["sidecar-agent", "wait", "--", "--url", "x"], True),  # after `--` no word is an option: the default URL
    (["redis-cli", "--", "-h", "redis"], False),
    (["sh", "-c", "curl -f http://localhost:8686/readyz"], True),
])
def test_exec_liveness_that_connects_elsewhere(command: list[str], dependency: bool) -> None:
    container = app(livenessProbe={"exec": {"command": command}})
    found = [r for r, _ in lint(pod(container, agent()))]
    assert ("liveness-dependency" in found) is dependency, found


def test_exec_liveness_on_a_sidecars_port_on_loopback() -> None:
    proxy = {"name": "proxy", "image": "envoy", "ports": [{"containerPort": 15000}]}
    container = {"name": "app", "image": "x", "livenessProbe": {"exec": {"command": ["curl", "http://127.0.0.1:15000/ready"]}}}
    assert lint(pod(container, proxy)) == [("liveness-dependency", "app")]


def test_identical_liveness_and_readiness_named_and_numbered() -> None:
    container = {"name": "api", "image": "x", "ports": [{"name": "http", "containerPort": 8080}],
                 "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}},
                 "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 3}}
    assert lint(pod(container)) == [("liveness-same-as-readiness", "api")]


def test_identical_probes_on_the_agent_are_reported_once_by_the_precise_rule() -> None:
    both_readyz = app(livenessProbe={"httpGet": {"path": "/readyz", "port": 8686}})
    both_livez = app(readinessProbe={"httpGet": {"path": "/livez", "port": 8686}, "periodSeconds": 2, "failureThreshold": 2})
    assert lint(pod(both_readyz, agent())) == [("liveness-dependency", "app")]
    assert lint(pod(both_livez, agent())) == [("probe-wrong-endpoint", "app")]


def test_identical_exec_probes() -> None:
    probe = {"exec": {"command": ["/bin/check"]}}
    assert lint(pod({"name": "a", "image": "x", "livenessProbe": probe, "readinessProbe": probe})) == \
        [("liveness-same-as-readiness", "a")]


@pytest.mark.parametrize(("delay", "startup", "flagged"), [(29, False, False), (30, False, True), (300, True, False)])
def test_long_initial_delay_without_startup_probe(delay: int, startup: bool, flagged: bool) -> None:
    container = {"name": "a", "image": "x", "livenessProbe": {"tcpSocket": {"port": 80}, "initialDelaySeconds": delay}}
    if startup:
        container["startupProbe"] = {"tcpSocket": {"port": 80}, "failureThreshold": 60}
    assert lint(pod(container)) == ([("startup-probe-missing", "a")] if flagged else [])


@pytest.mark.parametrize(("kind", "path", "ok"), [
    ("livenessProbe", "/livez", True), ("livenessProbe", "/livez/app-http", True), ("livenessProbe", "/startupz", False),
    ("livenessProbe", "/agent/livez", False), ("livenessProbe", "/healthz", False),
    ("readinessProbe", "/readyz?exclude=db", True), ("readinessProbe", "/livez", False),
    ("readinessProbe", "/startupz", False), ("readinessProbe", "/agent/readyz", False), ("readinessProbe", "/prestop", False),
    ("startupProbe", "/startupz", True), ("startupProbe", "/livez", False), ("startupProbe", "/readyz", False),
])
def test_app_probe_endpoints_on_the_agent(kind: str, path: str, ok: bool) -> None:
    probe: dict[str, object] = {"httpGet": {"path": path, "port": 8686}}
    if kind == "readinessProbe":
        probe.update(periodSeconds=2, failureThreshold=2)
    assert lint(pod(app(**{kind: probe}), agent())) == ([] if ok else [("probe-wrong-endpoint", "app")])


def test_a_tcp_probe_on_the_agents_port_sees_nothing_of_the_app() -> None:
    spec = pod(app(livenessProbe={"tcpSocket": {"port": 8686}}), agent())
    assert lint(spec) == [("probe-wrong-endpoint", "app")]


@pytest.mark.parametrize(("probe", "expected"), [
    ({"httpGet": {"path": "/agent/livez", "port": 8686}}, []),
    ({"httpGet": {"path": "/agent/readyz", "port": 8686}}, []),
    ({"httpGet": {"path": "/livez", "port": 8686}}, [("agent-probes-app-endpoints", "agent")]),
    ({"httpGet": {"path": "/readyz/db", "port": 8686}}, [("agent-probes-app-endpoints", "agent")]),
    ({"httpGet": {"path": "/health", "port": 8686}}, [("probe-wrong-endpoint", "agent")]),
    ({"httpGet": {"path": "/agent/livez", "port": 8080}}, [("probe-wrong-endpoint", "agent")]),
    ({"tcpSocket": {"port": 8686}}, []),
])
def test_the_agents_own_probes(probe: dict[str, object], expected: list[tuple[str, str]]) -> None:
    assert lint(pod(app(), agent(livenessProbe=probe))) == expected


def test_a_named_port_resolves_only_against_the_probed_container() -> None:
    named = agent(ports=[{"name": "probes", "containerPort": 8686}])
    unresolved = app(livenessProbe={"httpGet": {"path": "/livez", "port": "probes"}})
    resolved = app(livenessProbe={"httpGet": {"path": "/livez", "port": "probes"}},
                   ports=[{"name": "probes", "containerPort": 8686}])
    [finding] = lint_objects([pod(unresolved, named)])
    assert finding.rule == "probe-port-unresolved" and "container agent declares it" in finding.message
    assert "the number 8686" in finding.fix
    assert lint(pod(resolved, named)) == []


def test_a_preStop_hook_with_an_unknown_port_name() -> None:
    spec = pod(app(lifecycle={"preStop": {"httpGet": {"path": "/prestop", "port": "agent"}}}), agent())
    assert lint(spec) == [("probe-port-unresolved", "app")]


@pytest.mark.parametrize(("period", "failure", "flagged"), [
    (None, None, False), (10, 3, False), (5, 3, True), (5, 4, False), (10, 2, True), (12, 2, False), (1, 10, True),
])
def test_liveness_window_against_an_agent_restart(period: int | None, failure: int | None, flagged: bool) -> None:
    probe = {"httpGet": {"path": "/livez", "port": 8686}, "periodSeconds": period, "failureThreshold": failure}
    probe = {k: v for k, v in probe.items() if v is not None}
    assert lint(pod(app(livenessProbe=probe), agent())) == ([("liveness-window-too-short", "app")] if flagged else [])


def test_the_restart_time_is_the_kubelet_backoff_plus_the_measured_start() -> None:
    assert 11 <= AGENT_RESTART_SECONDS <= 12


def test_liveness_window_does_not_apply_in_exec_mode_or_off_the_agent() -> None:
    exec_mode = {"name": "app", "image": "x", "command": ["sidecar-agent", "exec", "--", "server"],
                 "livenessProbe": {"httpGet": {"path": "/livez", "port": 8686}, "periodSeconds": 1, "failureThreshold": 1}}
    own = app(livenessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 1},
              ports=[{"containerPort": 8080}])
    assert lint(pod(exec_mode)) == []
    assert lint(pod(own, agent())) == []


@pytest.mark.parametrize(("probe", "kind"), [
    ({"successThreshold": 2}, "livenessProbe"),
    ({"successThreshold": 3}, "startupProbe"),
    ({"periodSeconds": -5}, "readinessProbe"),
    ({"exec": {"command": ["true"]}}, "livenessProbe"),  # two handlers
])
def test_values_the_api_server_rejects(probe: dict[str, object], kind: str) -> None:
    body = {"tcpSocket": {"port": 80}, **probe}
    assert lint(pod({"name": "a", "image": "x", kind: body})) == [("probe-rejected", "a")]


@pytest.mark.parametrize("probe", [
    {"tcpSocket": {"port": 80}, "successThreshold": 3},  # readiness may need several successes
    {"tcpSocket": {"port": 80}, "successThreshold": 0},  # 0 is defaulted to 1
])
def test_values_the_api_server_accepts(probe: dict[str, object]) -> None:
    assert lint(pod({"name": "a", "image": "x", "readinessProbe": probe})) == []


@pytest.mark.parametrize("probe", [
    {"periodSeconds": 5},
    {"httpGet": {"path": "/", "port": "8080"}},
    {"httpGet": {"path": "/", "port": 70000}},
    {"httpGet": {"path": "/"}},
])
def test_malformed_handlers_are_rejected(probe: dict[str, object]) -> None:
    assert lint(pod({"name": "a", "image": "x", "readinessProbe": probe})) == [("probe-rejected", "a")]


def test_probes_on_a_plain_init_container_are_rejected() -> None:
    init = {"name": "init", "image": "x", "readinessProbe": {"tcpSocket": {"port": 80}}}
    assert lint(pod({"name": "a", "image": "x"}, initContainers=[init])) == [("probe-rejected", "init")]


@pytest.mark.parametrize(("command", "python"), [
    (["python3", "-c", "import sys"], True),
    (["/opt/venv/bin/python", "/app/check.py"], True),
    (["/app/healthcheck.py"], True),
    (["sh", "-c", "exec python3.12 -m app.health"], True),
    (["env", "PYTHONPATH=/app", "python", "check"], True),
    (["sidecar-agent", "wait", "--url", "http://127.0.0.1:8686/livez"], True),
    (["/bin/grpc_health_probe", "-addr=:9000"], False),
    (["sh", "-c", "test -f /tmp/pythonic"], False),
])
def test_exec_probes_that_start_python(command: list[str], python: bool) -> None:
    spec = pod({"name": "a", "image": "x", "readinessProbe": {"exec": {"command": command}}})
    assert (("probe-starts-python", "a") in lint(spec)) is python
