"""An `up` that fails half-way (here: right after it started the kubelet) tears down all it made: no process, mount,
network namespace, link, iptables chain or cgroup of the harness is left, and the host's sysctls are as before."""

from __future__ import annotations

import pytest

from tests.cluster.harness import STATE, cluster_cmd, leftovers, tool

pytestmark = pytest.mark.timeout(300, func_only=True)


@pytest.mark.parametrize("fail_at", ["kubelet"])
def test_an_up_that_fails_half_way_leaves_nothing(built: None, fail_at: str) -> None:
    cluster_cmd("down")  # from a clean machine, whatever an earlier run left
    assert leftovers(STATE) == {}
    before = tool.read_sysctls()
    proc = cluster_cmd("up", env={tool.FAIL_AT_ENV: fail_at}, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"failing on purpose after starting {fail_at}" in proc.stderr
    assert "tearing down" in proc.stderr
    assert leftovers(STATE) == {}
    assert tool.read_sysctls() == before
