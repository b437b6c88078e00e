"""The shutdown rules, and how the agent and its config are found, on plain mappings."""

from __future__ import annotations

from typing import Any

import pytest

from agent.lint import lint_objects
from agent.lint.agentinfo import load_permissive
from tests.lint.helpers import CONFIG_VOLUME, agent, app, config_map, lint, mounted, pod

TOKEN = "admin: {token_env: AGENT_TOKEN}\n"
MATCH = "app: {match: {name: server}}\n"
HTTP_HOOK = {"preStop": {"httpGet": {"path": "/prestop", "port": 8686,
                                     "httpHeaders": [{"name": "Authorization", "value": "Bearer s3cret"}]}}}


def with_config(text: str, *containers: dict[str, Any], **spec: Any) -> list[tuple[str, str | None]]:
    """Lint a pod whose agent (the last container) reads `text` from a mounted ConfigMap."""
    *others, last = containers
    return lint(config_map(text), pod(*others, mounted(last), volumes=CONFIG_VOLUME, **spec))


def test_prestop_missing_beside_the_agent() -> None:
    assert lint(pod(app(lifecycle=None), agent())) == [("prestop-missing", "app")]


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_no_prestop_needed_without_rollouts(kind: str) -> None:
    assert lint(pod(app(lifecycle=None), agent(), kind=kind)) == []


def test_no_prestop_needed_in_exec_mode() -> None:
    container = {"name": "app", "image": "x", "command": ["sidecar-agent", "exec", "--", "server"]}
    assert lint(pod(container)) == []


def test_only_the_containers_that_use_the_agent_need_the_hook() -> None:
    shipper = {"name": "log-shipper", "image": "fluent-bit"}
    assert lint(pod(app(), shipper, agent())) == []
    assert lint(pod(app(lifecycle=None), shipper, agent())) == [("prestop-missing", "app")]


def test_without_probes_on_the_agent_every_other_container_is_an_app() -> None:
    bare = {"name": "app", "image": "x"}
    worker = {"name": "worker", "image": "y"}
    assert lint(pod(bare, worker, agent())) == [("prestop-missing", "app"), ("prestop-missing", "worker")]


@pytest.mark.parametrize("hook", [
    {"exec": {"command": ["sleep", "10"]}},
    {"sleep": {"seconds": 10}},
    {"httpGet": {"path": "/prestop", "port": 8080}},
    {"httpGet": {"path": "/quitquitquit", "port": 8686}},
    {"httpGet": {"host": "10.1.2.3", "path": "/prestop", "port": 8686}},
    {"exec": {"command": ["sh", "-c", "curl -s http://other-pod:8686/prestop"]}},
])
def test_prestop_hooks_that_miss_the_agent(hook: dict[str, Any]) -> None:
    assert lint(pod(app(lifecycle={"preStop": hook}), agent())) == [("prestop-wrong-target", "app")]


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
@pytest.mark.parametrize("hook", [
    {"httpGet": {"path": "/shutdown", "port": 8080}},
    {"sleep": {"seconds": 1}},
    {"exec": {"command": ["sh", "-c", "kill -TERM 1"]}},
])
def test_batch_pods_keep_their_own_hooks(kind: str, hook: dict[str, Any]) -> None:
    """No Service to drain (issue 21): a Job's own hook is not the agent's business, as inject leaves it too."""
    container = app(lifecycle={"preStop": hook}, ports=[{"name": "http", "containerPort": 8080}])
    assert lint(pod(container, agent(), kind=kind, restartPolicy="Never")) == []
    assert lint(pod(container, agent(), kind="Deployment")) == [("prestop-wrong-target", "app")]


@pytest.mark.parametrize("command", [
    ["curl", "-fsS", "http://127.0.0.1:8686/prestop"],
    ["/bin/sh", "-c", "wget -qO- 'http://localhost:8686/prestop' >/dev/null 2>&1; true"],
])
def test_exec_hooks_on_loopback_reach_the_agent_without_a_token(command: list[str]) -> None:
    assert with_config(TOKEN, app(lifecycle={"preStop": {"exec": {"command": command}}}), agent()) == []


def test_an_http_hook_with_a_named_port_of_its_own() -> None:
    hook = {"preStop": {"httpGet": {"path": "/prestop", "port": "agent", "httpHeaders": HTTP_HOOK["preStop"]["httpGet"]["httpHeaders"]}}}
    container = app(lifecycle=hook, ports=[{"name": "agent", "containerPort": 8686}])
    assert with_config(TOKEN, container, agent()) == []


def test_an_http_hook_needs_a_token_configured() -> None:
    assert lint(pod(app(lifecycle=HTTP_HOOK), agent())) == [("prestop-no-token", "app")]
    assert with_config(TOKEN, app(lifecycle=HTTP_HOOK), agent()) == []
    assert with_config("admin: {token_file: /run/token}\n", app(lifecycle=HTTP_HOOK), agent()) == []


@pytest.mark.parametrize("headers", [[], [{"name": "X-Token", "value": "s3cret"}],
                                     [{"name": "Authorization", "value": "Basic czNjcmV0"}],
                                     [{"name": "Authorization", "value": "Bearer "}],
                                     [{"name": "authorization", "value": "Bearer $(AGENT_TOKEN)"}]])
def test_an_http_hook_without_a_usable_bearer_header(headers: list[dict[str, str]]) -> None:
    hook = {"preStop": {"httpGet": {"path": "/prestop", "port": 8686, "httpHeaders": headers}}}
    assert with_config(TOKEN, app(lifecycle=hook), agent()) == [("prestop-no-token", "app")]


def test_the_header_name_is_case_insensitive() -> None:
    hook = {"preStop": {"httpGet": {"path": "/prestop", "port": 8686,
                                    "httpHeaders": [{"name": "AUTHORIZATION", "value": "bearer s3cret"}]}}}
    assert with_config(TOKEN, app(lifecycle=hook), agent()) == []


def test_relay_needs_a_shared_process_namespace() -> None:
    assert with_config(MATCH, app(), agent()) == [("relay-without-shared-pid", "agent")]
    assert with_config(MATCH, app(), agent(), shareProcessNamespace=True) == []
    assert with_config(MATCH + "shutdown: {relay_signal: false}\n", app(), agent()) == []
    assert with_config("shutdown: {relay_signal: true}\n", app(), agent()) == []  # no app.match: nothing to relay to


def test_process_checks_need_a_shared_process_namespace_too() -> None:
    text = MATCH + "checks: {proc: {type: process, probes: [liveness]}}\nshutdown: {relay_signal: false}\n"
    [finding] = lint_objects([config_map(text), pod(app(), mounted(agent()), volumes=CONFIG_VOLUME)])
    assert finding.rule == "relay-without-shared-pid"
    assert "proc always fail" in finding.message and "restart the app" in finding.message


def test_exec_mode_sees_the_app_without_a_shared_namespace() -> None:
    container = {"name": "app", "image": "x", "command": ["sidecar-agent", "exec", "--config", "/config/agent.yaml", "--", "server"],
                 "volumeMounts": [{"name": "config", "mountPath": "/config"}]}
    assert lint(config_map(MATCH), pod(container, volumes=CONFIG_VOLUME)) == []


@pytest.mark.parametrize(("agent_ctx", "app_user", "pod_user", "flagged"), [
    ({}, None, 1000, False),                                                        # same user, from the pod
    ({"runAsUser": 2000}, None, 1000, True),
    ({"runAsUser": 2000}, 2000, 1000, False),
    ({"runAsUser": 2000, "capabilities": {"add": ["KILL"]}}, 1000, None, True),     # non-root: not effective
    ({"runAsUser": 0}, 1000, None, False),                                          # root keeps CAP_KILL
    ({"runAsUser": 0, "capabilities": {"drop": ["ALL"]}}, 1000, None, True),
    ({"runAsUser": 0, "capabilities": {"drop": ["ALL"], "add": ["CAP_KILL"]}}, 1000, None, False),
    ({"runAsUser": 2000}, None, None, False),                                       # the app's user is unknown
])
def test_the_agent_must_be_able_to_signal_the_app(agent_ctx: dict[str, Any], app_user: int | None, pod_user: int | None,
                                                  flagged: bool) -> None:
    app_container = app(securityContext={"runAsUser": app_user} if app_user is not None else None)
    spec: dict[str, Any] = {"shareProcessNamespace": True}
    if pod_user is not None:
        spec["securityContext"] = {"runAsUser": pod_user}
    found = with_config(MATCH, app_container, agent(securityContext=agent_ctx), **spec)
    assert found == ([("agent-cannot-signal", "agent")] if flagged else [])


@pytest.mark.parametrize(("text", "grace", "flagged"), [
    ("", None, False),                                                   # 5 + 20 + 5 = 30, the default grace period
    ("shutdown: {drain_delay: 6s}\n", None, True),
    ("shutdown: {drain_delay: 6s, grace_period: 40s}\n", 31, False),
    ("shutdown: {drain_delay: 10s, stop_timeout: 50s, relay_signal: false}\n", 15, False),  # not relayed: no stop_timeout
    ("shutdown: {drain_delay: 5s, drain_connections: {port: 8080, timeout: 15s}, grace_period: 60s}\n", 39, True),
])
def test_grace_period_covers_the_shutdown_budget(text: str, grace: int | None, flagged: bool) -> None:
    spec = {"terminationGracePeriodSeconds": grace} if grace is not None else {}
    found = with_config(text or "{}\n", app(), agent(), **spec)
    assert found == ([("grace-period-too-short", None)] if flagged else [])


@pytest.mark.parametrize(("drain", "period", "failure", "flagged"), [
    ("4s", 2, 2, False), ("3s", 2, 2, True), ("30s", None, None, False), ("29s", None, None, True),
])
def test_drain_delay_outlasts_the_readiness_probe(drain: str, period: int | None, failure: int | None, flagged: bool) -> None:
    probe: dict[str, Any] = {"httpGet": {"path": "/readyz", "port": 8686}}
    probe.update({k: v for k, v in (("periodSeconds", period), ("failureThreshold", failure)) if v is not None})
    text = f"shutdown: {{drain_delay: {drain}, stop_timeout: 1s, grace_period: 60s}}\n"
    assert with_config(text, app(readinessProbe=probe), agent(), terminationGracePeriodSeconds=60) == \
        ([("drain-shorter-than-readiness", "app")] if flagged else [])


def test_the_agent_is_found_by_image_by_command_or_as_python_module() -> None:
    by_command = {"name": "helper", "image": "corp/base:1", "command": ["/usr/local/bin/sidecar-agent", "run"]}
    by_module = {"name": "helper", "image": "corp/base:1", "command": ["python3", "-m", "agent", "run"]}
    by_shell = {"name": "helper", "image": "corp/base:1", "command": ["sh", "-c", "exec sidecar-agent run"]}
    by_digest = {"name": "helper", "image": "registry:5000/team/sidecar-agent@sha256:abc"}
    for helper in (by_command, by_module, by_shell, by_digest):
        assert lint(pod(app(lifecycle=None), helper)) == [("prestop-missing", "app")], helper


@pytest.mark.parametrize("command", [["sidecar-agent", "wait"], ["sidecar-agent", "check-config", "/x.yaml"]])
def test_other_agent_commands_are_not_the_agent(command: list[str]) -> None:
    assert lint(pod({"name": "app", "image": "x"}, {"name": "tool", "image": "sidecar-agent:1", "command": command})) == []


def test_a_native_sidecar_agent() -> None:
    native = {**agent(), "restartPolicy": "Always"}
    assert lint(pod(app(), initContainers=[native])) == []
    assert lint(pod(app(lifecycle=None), initContainers=[native])) == [("prestop-missing", "app")]


def test_the_config_moves_the_agents_port() -> None:
    moved = app(livenessProbe={"httpGet": {"path": "/livez", "port": 9000}},
                readinessProbe={"httpGet": {"path": "/readyz", "port": 9000}, "periodSeconds": 2, "failureThreshold": 2},
                lifecycle={"preStop": {"exec": {"command": ["curl", "http://127.0.0.1:9000/prestop"]}}})
    assert with_config("listen: 0.0.0.0:9000\n", moved, agent()) == []
    assert with_config("listen: 0.0.0.0:9000\n", app(), agent()) == [("prestop-wrong-target", "app")]
    assert lint(pod(moved, agent(args=["run", "--listen", ":9000"]))) == []
    assert lint(pod(moved, agent(env=[{"name": "SIDECAR_AGENT_LISTEN", "value": "0.0.0.0:9000"}]))) == []


def test_agent_config_option_replaces_the_configmap() -> None:
    objects = [config_map(MATCH), pod(app(), mounted(agent()), volumes=CONFIG_VOLUME)]
    assert rules_of(lint_objects(objects)) == ["relay-without-shared-pid"]
    assert rules_of(lint_objects(objects, agent_config="shutdown: {drain_delay: 5s}\n")) == []


def rules_of(findings: list[Any]) -> list[str]:
    return [f.rule for f in findings]


def test_an_invalid_config_is_a_finding_with_its_key_path() -> None:
    [finding] = lint_objects([config_map("shutdown: {drain_delay: soon}\n"), pod(app(), mounted(agent()), volumes=CONFIG_VOLUME)])
    assert finding.rule == "agent-config-invalid" and "shutdown.drain_delay" in finding.message
    assert "ConfigMap/agent-config key agent.yaml" in finding.message


def test_a_config_yaml_error_is_a_finding() -> None:
    [finding] = lint_objects([pod(app(), agent())], agent_config="checks: [unclosed\n")
    assert finding.rule == "agent-config-invalid" and "line 2" in finding.message


def test_environment_values_from_secrets_are_placeholders() -> None:
    text = ("admin: {token_env: AGENT_TOKEN}\n"
            "checks:\n  db: {type: postgres, dsn: '${DATABASE_URL}'}\n  cache: {type: redis, url: 'redis://${REDIS_HOST:-cache}:6379'}\n"
            "shutdown: {drain_delay: '${DRAIN:-5s}'}\n")
    env = [{"name": "AGENT_TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "t"}}}]
    assert with_config(text, app(lifecycle=HTTP_HOOK), agent(env=env)) == []
    settings = load_permissive(text, {"AGENT_TOKEN": None}, app_is_child=False, origin="test")
    assert settings.config is not None and settings.unchecked == ("db",)  # a placeholder is no DSN
    assert [c.name for c in settings.config.checks] == ["cache"]


def test_literal_environment_values_are_used() -> None:
    text = "shutdown: {drain_delay: '${DRAIN}'}\n"
    assert with_config(text, app(), agent(env=[{"name": "DRAIN", "value": "1s"}])) == [("drain-shorter-than-readiness", "app")]
    assert with_config(text, app(), agent(env=[{"name": "DRAIN", "value": "soon"}])) == [("agent-config-invalid", "agent")]


def test_kubernetes_expands_variables_in_args() -> None:
    container = {**agent(), "args": ["run", "--config", "$(CONFIG_DIR)/agent.yaml"],
                 "env": [{"name": "CONFIG_DIR", "value": "/config"}], "volumeMounts": [{"name": "config", "mountPath": "/config"}]}
    assert lint(config_map(MATCH), pod(app(), container, volumes=CONFIG_VOLUME)) == [("relay-without-shared-pid", "agent")]


def test_a_doubled_dollar_in_args_is_a_literal_dollar_as_for_the_kubelet() -> None:
    container = {**agent(), "args": ["run", "--config", "$$(CONFIG_DIR)/agent.yaml"],
                 "env": [{"name": "CONFIG_DIR", "value": "/config"}], "volumeMounts": [{"name": "config", "mountPath": "/config"}]}
    # The agent is given the path `$(CONFIG_DIR)/agent.yaml`, which no volume holds.
    assert rules_of(lint_objects([config_map(MATCH), pod(app(), container, volumes=CONFIG_VOLUME)])) == ["agent-config-not-found"]


def test_a_config_not_in_the_files_is_a_note() -> None:
    [finding] = lint_objects([pod(app(), mounted(agent()), volumes=CONFIG_VOLUME)])
    assert (finding.rule, finding.severity) == ("agent-config-not-found", "info")


def test_a_configmap_of_another_namespace_is_not_the_one_mounted() -> None:
    spec = pod(app(), mounted(agent()), volumes=CONFIG_VOLUME)
    spec["metadata"]["namespace"] = "prod"
    assert rules_of(lint_objects([config_map(MATCH, namespace="staging"), spec])) == ["agent-config-not-found"]
    assert rules_of(lint_objects([config_map(MATCH, namespace="prod"), spec])) == ["relay-without-shared-pid"]


def test_config_from_items_subpath_and_secrets() -> None:
    items = [{"name": "config", "configMap": {"name": "agent-config", "items": [{"key": "agent.yaml", "path": "conf/a.yaml"}]}}]
    container = {**agent(), "args": ["run", "--config", "/etc/x/conf/a.yaml"], "volumeMounts": [{"name": "config", "mountPath": "/etc/x"}]}
    assert lint(config_map(MATCH), pod(app(), container, volumes=items)) == [("relay-without-shared-pid", "agent")]
    sub = {**agent(), "args": ["run", "--config", "/agent.yaml"],
           "volumeMounts": [{"name": "config", "mountPath": "/agent.yaml", "subPath": "agent.yaml"}]}
    assert lint(config_map(MATCH), pod(app(), sub, volumes=CONFIG_VOLUME)) == [("relay-without-shared-pid", "agent")]
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "agent-secret"},
              "data": {"agent.yaml": "YXBwOiB7bWF0Y2g6IHtuYW1lOiBzZXJ2ZXJ9fQo="}}  # base64 of MATCH
    volume = [{"name": "config", "secret": {"secretName": "agent-secret"}}]
    assert lint(secret, pod(app(), mounted(agent()), volumes=volume)) == [("relay-without-shared-pid", "agent")]


def test_workload_kinds_and_lists() -> None:
    for kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"):
        [finding] = lint_objects([pod({"name": "a", "image": "x", "livenessProbe": {"tcpSocket": {"port": 1}, "successThreshold": 2}},
                                      kind=kind)])
        assert (finding.rule, finding.object) == ("probe-rejected", f"{kind}/p")
    listed = {"apiVersion": "v1", "kind": "List", "items": [pod(app(lifecycle=None), agent(), name="in-list")]}
    assert [(f.rule, f.object) for f in lint_objects([listed])] == [("prestop-missing", "Pod/in-list")]


@pytest.mark.parametrize("command", [
    {"command": ["sh", "-c"], "args": ["python migrate.py && python server.py"]},
    {"command": ["/bin/bash", "-c", "python server.py; echo stopped"]},
    {"command": ["sh", "-c", "cd /app\npython server.py\n"]},
    {"command": ["./entrypoint.sh"]},
    {"command": ["bash"], "args": ["/docker-entrypoint.sh", "serve"]},
    {"command": ["npm", "start"]},
    {"command": ["sh", "-c", "exec yarn start"]},
])
def test_an_app_behind_a_shell_or_launcher_is_warned_about(command: dict[str, Any]) -> None:
    assert with_config(MATCH, app(**command), agent(), shareProcessNamespace=True) == [("app-behind-shell", "app")]


@pytest.mark.parametrize("command", [
    {"command": ["python", "server.py"]},
    {"command": ["sh", "-c", "python server.py"]},  # a lone command: the shell replaces itself with it
    {"command": ["sh", "-c", "python migrate.py && exec python server.py"]},
    {"command": ["sh", "-c", "# start\ncd /app\nexec python server.py\n"]},
    {},  # the image's own CMD: lint cannot see it
])
def test_an_app_started_directly_or_with_exec_is_not(command: dict[str, Any]) -> None:
    assert with_config(MATCH, app(**command), agent(), shareProcessNamespace=True) == []


def test_no_warning_when_the_agent_relays_no_signal() -> None:
    shell = app(command=["sh", "-c", "python server.py; echo done"])
    assert with_config(MATCH + "shutdown: {relay_signal: false}\n", shell, agent(), shareProcessNamespace=True) == []
    assert with_config("checks: {}\n", shell, agent(), shareProcessNamespace=True) == []  # no app.match: no relay


def test_the_warning_says_whether_the_group_signal_reaches_the_app() -> None:
    shell = app(command=["sh", "-c", "python server.py; echo done"])
    spec = pod(shell, mounted(agent()), volumes=CONFIG_VOLUME, shareProcessNamespace=True)
    default = lint_objects([config_map(MATCH), spec])
    assert [f.rule for f in default] == ["app-behind-shell"]
    assert "only through its process group (stop_scope: group)" in default[0].message
    assert "exec python app.py" in default[0].fix
    scoped = lint_objects([config_map(MATCH + "shutdown: {stop_scope: process}\n"), spec])
    assert [f.rule for f in scoped] == ["app-behind-shell"]
    assert "with stop_scope: process the agent's SIGTERM reaches only that wrapper" in scoped[0].message


def test_exec_mode_is_warned_about_only_with_stop_scope_process() -> None:
    container = {"name": "app", "image": "x", "command": ["sidecar-agent", "exec", "--config", "/config/agent.yaml",
                                                           "--", "sh", "-c", "python server.py; echo done"],
                 "volumeMounts": [{"name": "config", "mountPath": "/config"}]}
    assert lint(pod({**container, "command": container["command"][:2] + container["command"][4:]})) == []
    findings = lint_objects([config_map("shutdown: {stop_scope: process}\n"), pod(container, volumes=CONFIG_VOLUME)])
    assert [(f.rule, f.container) for f in findings] == [("app-behind-shell", "app")]
    assert "stop_scope: process sends SIGTERM to it alone" in findings[0].message


# -- a container restart runs the preStop hook too (the agent tells it from a pod stop by the probe it answered) ----

WAIT_HOOK = {"preStop": {"httpGet": {"path": "/prestop/wait", "port": 8686}}}


def test_a_prestop_hook_whose_liveness_the_agent_does_not_answer_would_stop_the_agent_on_a_restart() -> None:
    own_liveness = {"httpGet": {"path": "/healthz", "port": 8080}}
    assert lint(pod(app(livenessProbe=own_liveness), agent())) == [("prestop-restart-stops-agent", "app")]
    assert lint(pod(app(livenessProbe=own_liveness, lifecycle=WAIT_HOOK), agent())) == [("prestop-restart-held", "app")]


@pytest.mark.parametrize(("liveness", "path", "flagged"), [
    ("/livez", "/prestop/wait", False),
    ("/livez/web-liveness", "/prestop/wait?check=web-liveness", False),
    ("/livez/web-liveness", "/prestop/wait", True),  # the hook does not say which check is its container's
    ("/livez", "/prestop/wait?check=web-liveness", True),  # it names a check the probe does not ask
])
def test_the_hook_names_the_checks_its_containers_probes_ask(liveness: str, path: str, flagged: bool) -> None:
    probe = {"httpGet": {"path": liveness, "port": 8686}}
    hook = {"preStop": {"httpGet": {"path": path, "port": 8686}}}
    assert lint(pod(app(livenessProbe=probe, lifecycle=hook), agent())) == (
        [("prestop-restart-held", "app")] if flagged else [])
