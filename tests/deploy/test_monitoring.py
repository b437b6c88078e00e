"""deploy/prometheus and deploy/grafana: the rules load in Prometheus, fire when they should, and every metric
they and the dashboard query is one a live agent serves."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import AGENT, GRAFANA, PROMETHEUS, documents, metric_names, size_bytes, workloads

RULES = documents(PROMETHEUS / "prometheusrule.yaml")[0]
DASHBOARD_FILES = sorted(GRAFANA.glob("*.json"))
# Named in the issue: each must exist in a live agent's /metrics, whether or not a rule uses it yet.
PROMISED = {"sidecar_check_up", "sidecar_check_duration_seconds_bucket", "sidecar_check_runs_total",
            "sidecar_check_transitions_total", "sidecar_probe_up", "sidecar_probe_requests_total", "sidecar_phase",
            "sidecar_app_up", "sidecar_app_restarts_total", "sidecar_app_resident_memory_bytes",
            "sidecar_app_cpu_seconds_total", "sidecar_app_threads", "sidecar_app_open_fds",
            "sidecar_shutdown_outcome_total", "sidecar_event_loop_lag_seconds", "process_resident_memory_bytes"}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "${datasource}": "",
                     "$namespace": "default", "$pod": ".*", "$check": ".*"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install prometheus (tools/test.py does)")
    return found


def rules_file(folder: Path, groups: list[dict[str, Any]]) -> Path:
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in RULES["spec"]["groups"] for rule in group["rules"]]


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            inner = query.removeprefix("label_values(").rsplit(",", 1)[0] if query.startswith("label_values(") else query
            out.append((f"variable {variable['name']}", inner))
    return out


def without_variables(expr: str) -> str:
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(name, value)
    return expr


def test_promtool_accepts_the_rule_groups(tmp_path: Path) -> None:
    done = subprocess.run([promtool(), "check", "rules", "--lint=all", "--lint-fatal",
                           str(rules_file(tmp_path, RULES["spec"]["groups"]))], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_the_alerts_cover_what_the_issue_asks() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {"SidecarCheckFailing", "SidecarReadinessFlapping", "SidecarAppRestarted", "SidecarShutdownKilledApp",
            "SidecarAgentEventLoopLag", "SidecarAgentRestarted"} <= names
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """promtool's unit tests (tests/deploy/alerts_test.yaml) over the rules, annotations left out."""
    groups = [{**group, "rules": [{k: v for k, v in rule.items() if k != "annotations"} for rule in group["rules"]]}
              for group in RULES["spec"]["groups"]]
    rules = rules_file(tmp_path, groups)
    spec = yaml.safe_load((Path(__file__).parent / "alerts_test.yaml").read_text())
    spec["rule_files"] = [str(rules)]
    tested = {case["alertname"] for test in spec["tests"] for case in test["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alert_rules()}, "every alert has a unit test"
    path = tmp_path / "alerts_test.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    done = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_metric_the_rules_use_is_served_by_a_live_agent(live_metrics: set[str]) -> None:
    used = set().union(*(metric_names(str(rule["expr"])) for rule in alert_rules()))
    assert {"sidecar_check_up", "sidecar_shutdown_outcome_total", "sidecar_event_loop_lag_seconds"} <= used
    assert sorted(used - live_metrics) == []


def test_every_metric_the_issue_names_is_served_by_a_live_agent(live_metrics: set[str]) -> None:
    assert sorted(PROMISED - live_metrics) == []


def test_the_metric_name_reader() -> None:
    expr = ('histogram_quantile(0.99, sum by (check, le) (rate(foo_bucket{check=~"a|b", x="up"}[$__rate_interval]))) '
            '/ on (pod) group_left(check) bar_total offset 5m > 100 * 1024 unless ignoring (x) '
            'max_over_time((baz == 1)[1h:]) and count(qux{le="1e3"}) by (pod) or vector(1)')
    assert metric_names(expr) == {"foo_bucket", "bar_total", "baz", "qux"}


def test_the_memory_alert_sits_below_the_manifests_limit() -> None:
    rule = next(rule for rule in alert_rules() if rule["alert"] == "SidecarAgentMemoryHigh")
    threshold = math.prod(int(factor) for factor in rule["expr"].split(">", 1)[1].split("*"))
    for workload in workloads():
        limit = size_bytes(workload.agent["resources"]["limits"]["memory"])
        request = size_bytes(workload.agent["resources"]["requests"]["memory"])
        assert request < threshold < limit, workload.name
    assert f'container="{AGENT}"' in rule["expr"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.name for p in DASHBOARD_FILES])
def test_the_dashboard_is_a_grafana_dashboard(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None, "an exported id would clash on import"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= variables
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert 'namespace="$namespace"' in target["expr"] and 'pod=~"$pod"' in target["expr"], panel["title"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.name for p in DASHBOARD_FILES])
def test_every_dashboard_query_parses_and_uses_metrics_a_live_agent_serves(path: Path, tmp_path: Path,
                                                                           live_metrics: set[str]) -> None:
    dashboard = json.loads(path.read_text())
    queries = dashboard_queries(dashboard)
    used: set[str] = set()
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        missing = sorted(names - live_metrics)
        assert missing == [], f"{where}: {missing} not in the agent's /metrics"
        used |= names
    # The panels the issue asks for: probe states, check durations, transitions, app resources, shutdown phases.
    assert {"sidecar_probe_up", "sidecar_check_duration_seconds_bucket", "sidecar_check_transitions_total",
            "sidecar_app_resident_memory_bytes", "sidecar_app_cpu_seconds_total", "sidecar_phase",
            "sidecar_shutdown_outcome_total"} <= used
    # Valid PromQL: as recording rules, promtool parses every query (with Grafana's variables filled in).
    rules = [{"record": f"dashboard:query_{n}", "expr": without_variables(expr)} for n, (_, expr) in enumerate(queries)]
    done = subprocess.run([promtool(), "check", "rules", str(rules_file(tmp_path, [{"name": "dashboard", "rules": rules}]))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
