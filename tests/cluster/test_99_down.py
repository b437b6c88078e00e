"""Last: `down` after a session's scenarios (pods of every kind left running) leaves nothing of the harness, twice."""

from __future__ import annotations

import pytest

from tests.cluster.harness import STATE, Cluster, cluster_cmd, leftovers

pytestmark = pytest.mark.timeout(300, func_only=True)


def test_down_leaves_nothing_and_is_idempotent(cluster: Cluster) -> None:
    assert cluster.get("nodes")["items"], "the cluster is up before the test"
    for _ in range(2):
        proc = cluster_cmd("down", timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert leftovers(STATE) == {}
