"""End to end: a pod deletion with kubelet-like probes, endpoint lag and client load (see tests/e2e/pod.py).

With the agent's ordering no client request fails; with SIGTERM straight to the app while the Service still
routes to it, requests are dropped (which shows this test can fail). Run with `-s` to see both counts, or set
SIDECAR_E2E_REPORT=FILE to have one JSON line per scenario appended to FILE.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.e2e.pod import Outcome, Timing, run_scenario

TIMING = Timing()


def report(outcome: Outcome) -> None:
    print(f"\n[e2e] {outcome.summary()}")
    if outcome.failures:
        print("[e2e] first failures (seconds after the deletion): " + "; ".join(f"{at}s {what}" for at, what in outcome.failures[:5]))
    path = os.environ.get("SIDECAR_E2E_REPORT")
    if path:
        row = {"scenario": outcome.scenario, "failed": outcome.failed, "succeeded": outcome.succeeded,
               "unrouted": outcome.unrouted, "readiness_failed_after": outcome.at(outcome.first_not_ready),
               "readiness_answer": outcome.not_ready_answer,
               "endpoint_removed_after": outcome.at(outcome.endpoint_removed),
               "app_sigterm_after": outcome.at(outcome.app_sigterm), "seconds": outcome.seconds}
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def test_with_the_agent_a_pod_deletion_drops_no_request(tmp_path: Path) -> None:
    outcome = run_scenario(tmp_path, with_agent=True, timing=TIMING)
    report(outcome)
    context = outcome.summary() + "\nagent log:\n" + "\n".join(outcome.agent_log)
    assert outcome.succeeded >= 100, context  # traffic really flowed to the pod
    assert outcome.failed == 0, f"{outcome.failures[:10]}\n{context}"
    assert outcome.liveness_failures == 0, context
    # The order: readiness fails, the Service drops the pod, only then does the app get SIGTERM.
    assert outcome.first_not_ready is not None and outcome.app_sigterm is not None, context
    assert outcome.endpoint_removed is not None, context
    assert outcome.not_ready_answer == "HTTP 503", context
    assert outcome.deleted < outcome.first_not_ready < outcome.app_sigterm, context
    assert outcome.endpoint_removed < outcome.app_sigterm, context
    assert outcome.app_sigterm - outcome.deleted >= TIMING.drain_delay, context
    # The preStop hook held the app's SIGTERM from the kubelet until the agent had stopped the app.
    assert outcome.prestop == (200, "shutdown: exited\n"), context
    assert outcome.app_exit_code == 0, context
    assert outcome.agent_exit_code == 0, context


def test_without_the_agent_sigterm_at_deletion_drops_requests(tmp_path: Path) -> None:
    outcome = run_scenario(tmp_path, with_agent=False, timing=TIMING)
    report(outcome)
    assert outcome.succeeded >= 100, outcome.summary()
    assert outcome.app_exit_code == 0, outcome.summary()
    assert outcome.failed > 0, outcome.summary()
