"""shutdown.endpoints without API access: the agent drains on the timer, and its log, /status and metric say why."""

from __future__ import annotations

import signal

from agent.testing import run_agent

CONFIG = """
shutdown:
  drain_delay: 1s
  relay_signal: false
  endpoints: {enabled: %s}
"""
OUTSIDE = {"KUBERNETES_SERVICE_HOST": "", "POD_NAME": "web-0", "POD_NAMESPACE": "shop"}


def test_enabled_without_a_cluster_is_the_timer_said_once_as_a_warning() -> None:
    with run_agent(CONFIG % "true", env=OUTSIDE) as agent:
        endpoints = agent.status()["endpoints"]
        assert endpoints["state"] == "off" and endpoints["live"] is False
        assert endpoints["reason"] == "KUBERNETES_SERVICE_HOST is not set (not in a cluster)"
        assert "sidecar_shutdown_endpoints_up 0.0" in agent.get("/metrics")[1]
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit(timeout=30) == 0
        records = agent.log_records()
        said = [r for r in records if "the drain is the timer, not the EndpointSlices" in r["message"]]
        assert [r["level"] for r in said] == ["warning"]
        messages = [r["message"] for r in records]
        assert "shutdown started by SIGTERM: draining for 1s (the EndpointSlices are not followed: "\
               "KUBERNETES_SERVICE_HOST is not set (not in a cluster))" in messages
        over = [r for r in records if r["message"].startswith("drain over after 1")]
        assert len(over) == 1 and over[0]["drain_ended_by"] == "timer", messages
        assert over[0]["message"].endswith(": the EndpointSlices are not followed: KUBERNETES_SERVICE_HOST is not "
                                           "set (not in a cluster)")


def test_auto_without_a_cluster_says_so_as_information() -> None:
    with run_agent(CONFIG % "auto", env=OUTSIDE) as agent:
        assert agent.status()["endpoints"]["state"] == "off"
        said = [r for r in agent.log_records() if "the drain is the timer, not the EndpointSlices" in r["message"]]
        assert [r["level"] for r in said] == ["info"]


def test_without_the_section_there_is_no_endpoints_state() -> None:
    with run_agent("shutdown: {drain_delay: 1s}", env=OUTSIDE) as agent:
        assert agent.status()["endpoints"] is None
        assert 'sidecar_shutdown_drain_seconds_count{ended_by="timer"} 0.0' in agent.get("/metrics")[1]
