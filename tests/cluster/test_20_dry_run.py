"""Scenario 6: every manifest of the injection corpus, injected for each supported Kubernetes version, is admitted
by the 1.34 API server (`kubectl apply --dry-run=server`) with no warning."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.cluster.harness import ROOT, Cluster

pytestmark = pytest.mark.timeout(300, func_only=True)

CORPUS = ROOT / "tests" / "inject" / "corpus"
# Each minor that the injection's output depends on and that a 1.34 API server serves: regular container below
# 1.29, native sidecar from 1.29, the sleep preStop action from 1.30, up to the cluster's own.
VERSIONS = ["1.28", "1.29", "1.30", "1.31", "1.32", "1.33", "1.34"]


@pytest.mark.parametrize("version", VERSIONS)
def test_injected_corpus_is_admitted_without_warning(cluster: Cluster, version: str) -> None:
    injected = subprocess.run([sys.executable, "-m", "agent", "inject", "--kubernetes-version", version, str(CORPUS)],
                              capture_output=True, text=True, check=True, cwd=ROOT).stdout
    namespaces = sorted(set(re.findall(r"^  namespace: (\S+)$", injected, re.M)))
    for ns in namespaces:  # the documents' own namespaces (the rest go to `default`)
        cluster.existing_namespace(ns)
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=injected, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "arning" not in proc.stderr, proc.stderr
    admitted = [line for line in proc.stdout.splitlines() if "(server dry run)" in line]
    documents = [d for d in injected.split("\n---") if "kind:" in d]
    assert len(admitted) >= len(documents) - 1, proc.stdout  # a List counts once per item
    # Nothing was created: a dry run has no side effect.
    for ns in ["default", *namespaces]:
        assert cluster.get("deployments,jobs,cronjobs,statefulsets,daemonsets,pods", "-n", ns)["items"] == []
