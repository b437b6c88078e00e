"""Scenario 2: a rolling update under load through a Service's ClusterIP (kube-proxy), with the agent injected
(native sidecar, and a regular container for 1.28) and without it: 0 failed requests with it; the plain Deployment in
the same run must lose some, or the scenario would prove nothing."""

from __future__ import annotations

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.rolling import assert_lossless, roll
from tests.cluster.workloads import deployment, inject

pytestmark = pytest.mark.timeout(360, func_only=True)

NS = "rollout"


def test_without_the_agent_a_rollout_loses_requests(cluster: Cluster) -> None:
    load = roll(cluster, NS, "plain", deployment("plain"))
    assert load.fresh.ok > 100 and load.pooled.ok > 100
    assert load.fresh.failed + load.pooled.failed > 0, "the baseline lost nothing: the scenario proves nothing"


@pytest.mark.parametrize("version", [None, "1.28"], ids=["native", "regular-1.28"])
def test_with_the_agent_a_rollout_loses_no_request(cluster: Cluster, version: str | None) -> None:
    name = "native" if version is None else "regular"
    load = roll(cluster, NS, name, inject(deployment(name), version))
    assert_lossless(load)
    assert len(load.fresh.pods) >= 6  # old and new pods both answered
