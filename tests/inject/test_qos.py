"""The pod's QoS class, by the API server's rules (pkg/apis/core/helper/qos), and `inject` keeping it: a Guaranteed
pod stays Guaranteed, a Burstable one Burstable, and a BestEffort one becomes Burstable (the agent has requests)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from fractions import Fraction
from typing import Any

import pytest
import yaml

from agent.inject import Options, inject_template
from agent.inject.container import NAME
from agent.inject.documents import TEMPLATES, run
from agent.kube.qos import QosClass, qos_class, quantity

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
FILES = sorted(CORPUS.glob("*.yaml"))
VERSIONS = [(1, 28), (1, 29), (1, 30), (1, 33)]  # every injection mode: regular, native with httpGet, native with sleep
STATUS = "sidecar-agent.io/status"
G, B, BE = QosClass.GUARANTEED, QosClass.BURSTABLE, QosClass.BEST_EFFORT


@pytest.mark.parametrize(("text", "value"), [
    ("500m", Fraction(1, 2)), ("1", Fraction(1)), (1, Fraction(1)), (0.5, Fraction(1, 2)), ("2000m", Fraction(2)),
    ("128Mi", Fraction(128 * 2**20)), ("1Gi", Fraction(2**30)), ("1G", Fraction(10**9)), ("1k", Fraction(1000)),
    ("1e3", Fraction(1000)), ("1.5Gi", Fraction(3 * 2**29)), ("100u", Fraction(1, 10**4)), (".5", Fraction(1, 2)),
])
def test_quantities_are_read_exactly(text: object, value: Fraction) -> None:
    assert quantity(text) == value


@pytest.mark.parametrize("text", ["", "1 Gi", "1GB", "Mi", "one", True, None, [1]])
def test_a_quantity_that_is_none_is_refused(text: object) -> None:
    with pytest.raises(ValueError):
        quantity(text)


def c(requests: dict[str, Any] | None = None, limits: dict[str, Any] | None = None) -> dict[str, Any]:
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v is not None}
    return {"name": "c", "image": "c:1", **({"resources": resources} if resources else {})}


BOTH = {"cpu": "1", "memory": "1Gi"}


@pytest.mark.parametrize(("spec", "expected"), [
    ({"containers": [c()]}, BE),
    ({"containers": [c(BOTH, BOTH)]}, G),
    ({"containers": [c(None, BOTH)]}, G),  # requests default to limits
    ({"containers": [c({"cpu": "1000m", "memory": "1024Mi"}, BOTH)]}, G),  # equal amounts, written differently
    ({"containers": [c(BOTH, BOTH), c()]}, B),  # one container without limits
    ({"containers": [c(BOTH, BOTH)], "initContainers": [c()]}, B),  # init containers count
    ({"containers": [c(BOTH, BOTH)], "initContainers": [c(BOTH, BOTH)]}, G),
    ({"containers": [c(BOTH, BOTH)], "initContainers": [{**c({"cpu": "20m", "memory": "64Mi"}, BOTH),
                                                          "restartPolicy": "Always"}]}, B),  # a native sidecar too
    ({"containers": [c({"cpu": "1"}, {"cpu": "1"})]}, B),  # no memory limit
    ({"containers": [c({"cpu": "500m", "memory": "1Gi"}, BOTH)]}, B),
    ({"containers": [c({"cpu": "1"})]}, B),
    ({"containers": [c({"cpu": "0", "memory": "0"})]}, BE),  # zero counts as nothing
    ({"containers": [c({"cpu": "0", "memory": "1Gi"}, BOTH)]}, B),  # a zero request is written, not defaulted
    ({"containers": [c({"ephemeral-storage": "1Gi", "nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "1"})]}, BE),
    ({"containers": [c({**BOTH, "hugepages-2Mi": "2Mi"}, BOTH)]}, G),  # only cpu and memory count
    ({"containers": [c(BOTH, BOTH)], "resources": {"requests": {"cpu": "500m"}, "limits": BOTH}}, B),  # pod-level decides
    ({"containers": [c(BOTH, BOTH)], "resources": {"requests": {"cpu": "1"}, "limits": BOTH}}, G),  # memory defaulted
    ({"containers": [c()], "resources": {"limits": BOTH}}, G),
    ({"containers": [c()], "resources": {"limits": {"storage": "1Gi"}}}, BE),  # not a pod-level cpu or memory
])
def test_the_class_follows_the_api_servers_rules(spec: dict[str, Any], expected: QosClass) -> None:
    assert qos_class(spec) is expected


def templates(text: str) -> list[dict[str, Any]]:
    """Every pod template of a YAML text, in order."""
    out = []
    for doc in yaml.safe_load_all(text):
        for obj in doc.get("items", []) if doc.get("kind") == "List" else [doc]:
            if obj.get("kind") in TEMPLATES:
                node = obj
                for step in TEMPLATES[obj["kind"]]:
                    node = node[step]
                out.append(node)
    return out


def annotations(template: dict[str, Any]) -> dict[str, Any]:
    return (template.get("metadata") or {}).get("annotations") or {}


def test_the_corpus_has_every_class() -> None:
    assert {qos_class(t["spec"]) for f in FILES for t in templates(f.read_text())} == {G, B, BE}


@pytest.mark.parametrize("version", VERSIONS, ids=[f"{v[0]}.{v[1]}" for v in VERSIONS])
@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_injection_keeps_the_class(path: pathlib.Path, version: tuple[int, int]) -> None:
    before = templates(path.read_text())
    after = templates(run([str(path)], Options(kubernetes_version=version)).text)
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        injected = STATUS in annotations(new) and STATUS not in annotations(old)
        expected = B if injected and qos_class(old["spec"]) is BE else qos_class(old["spec"])
        assert qos_class(new["spec"]) is expected, old.get("metadata")


def agent_resources(spec: dict[str, Any], version: tuple[int, int]) -> dict[str, Any]:
    """The agent container's resources once the pod SPEC is injected for VERSION."""
    out = inject_template({"metadata": {}, "spec": spec}, Options(kubernetes_version=version)).template["spec"]
    return next(x for x in [*out.get("initContainers", []), *out["containers"]] if x["name"] == NAME)["resources"]


def test_in_a_guaranteed_pod_the_agents_requests_are_its_limits() -> None:
    for version in VERSIONS:
        guaranteed = agent_resources({"containers": [c(BOTH, BOTH)]}, version)
        assert guaranteed["requests"] == guaranteed["limits"]
        burstable = agent_resources({"containers": [c({"cpu": "1"})]}, version)
        assert burstable["requests"] != burstable["limits"], "only a Guaranteed pod reserves more"


def test_pod_level_resources_decide_alone_so_the_agent_keeps_its_small_requests() -> None:
    spec = {"containers": [c()], "resources": {"limits": BOTH}}
    out = inject_template({"metadata": {}, "spec": spec}, Options()).template["spec"]
    assert qos_class(out) is G
    assert out["initContainers"][0]["resources"]["requests"] == {"cpu": "20m", "memory": "64Mi"}


def test_a_quantity_that_is_none_exits_2_with_its_line_and_key_path(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: a\n    image: a\n"
                   "  initContainers:\n  - name: b\n    image: b\n    resources:\n      requests:\n        cpu: fast\n")
    done = subprocess.run([sys.executable, "-m", "agent", "inject", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{bad}:13: Pod/p: spec.initContainers[0].resources.requests.cpu: not a quantity: 'fast'" in done.stderr


def test_a_best_effort_pod_is_told_it_becomes_burstable() -> None:
    told = inject_template({"metadata": {}, "spec": {"containers": [c()]}}, Options()).notes
    assert "QoS class BestEffort becomes Burstable: the agent requests cpu 20m and memory 64Mi" in told
    for spec in ({"containers": [c(BOTH, BOTH)]}, {"containers": [c({"cpu": "1"})]}):
        assert not [n for n in inject_template({"metadata": {}, "spec": spec}, Options()).notes if "QoS" in n]
