"""Which Kubernetes version decides the sidecar mode: kubelet versions read as the nodes report them, the oldest
taken, mapped to the mode that works on it; and where `inject` records it."""

from __future__ import annotations

import json

import pytest

from agent.inject import Options, inject_template
from agent.kube.versions import FALLBACK, Mode, Source, mode, oldest, parse_kubelet


@pytest.mark.parametrize(("text", "version"), [
    ("v1.29.4", (1, 29)),
    ("v1.30.0-eks-036c24b", (1, 30)),
    ("v1.28.3+k3s1", (1, 28)),
    ("v1.31.2-gke.1000", (1, 31)),
    ("1.33.1", (1, 33)),
    ("v1.100.0", (1, 100)),
    (" v1.27.16 ", (1, 27)),
])
def test_kubelet_versions_read_as_the_nodes_report_them(text: str, version: tuple[int, int]) -> None:
    assert parse_kubelet(text) == version


@pytest.mark.parametrize("text", ["", "v1", "latest", "v1.x.0", "1.29.4 extra", "vv1.29.4"])
def test_a_kubelet_version_that_is_none_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_kubelet(text)


def test_the_oldest_kubelet_decides_by_number_not_by_text() -> None:
    nodes = [("a", "v1.31.2"), ("b", "v1.9.0"), ("c", "v1.30.0-eks-1"), ("d", "v1.10.3")]
    assert oldest(nodes) == (1, 9)
    assert oldest([("a", "v1.33.0"), ("b", "v1.29.4"), ("c", "v1.30.1")]) == (1, 29)


def test_no_answer_when_a_node_cannot_be_read_or_there_is_none() -> None:
    with pytest.raises(ValueError, match="node b"):
        oldest([("a", "v1.33.0"), ("b", "")])
    with pytest.raises(ValueError, match="no nodes"):
        oldest([])


@pytest.mark.parametrize(("version", "expected"), [
    ((1, 27), Mode.REGULAR), ((1, 28), Mode.REGULAR), ((1, 29), Mode.NATIVE_WAIT), ((1, 30), Mode.NATIVE_SLEEP),
    ((1, 33), Mode.NATIVE_SLEEP), ((2, 0), Mode.NATIVE_SLEEP),
])
def test_each_kubelet_version_gets_the_mode_that_works_on_it(version: tuple[int, int], expected: Mode) -> None:
    assert mode(version) is expected


def test_the_fallback_works_on_every_kubelet() -> None:
    assert mode(FALLBACK) is Mode.REGULAR  # no native sidecar, no sleep action: nothing an old kubelet lacks


def pod() -> dict[str, object]:
    return {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}}


@pytest.mark.parametrize(("version", "source", "sidecar"), [
    ((1, 29), Source.NODES, "native"), ((1, 28), Source.FALLBACK, "regular"), ((1, 33), Source.FLAG, "native"),
    ((1, 33), Source.DEFAULT, "native"),
])
def test_the_status_annotation_records_the_version_and_where_it_came_from(
        version: tuple[int, int], source: Source, sidecar: str) -> None:
    outcome = inject_template(pod(), Options(kubernetes_version=version, kubernetes_source=source))
    status = json.loads(outcome.template["metadata"]["annotations"]["sidecar-agent.io/status"])
    assert (status["kubernetes"], status["kubernetes_from"], status["sidecar"]) == (
        f"{version[0]}.{version[1]}", source.value, sidecar)
    init = outcome.template["spec"].get("initContainers") or []
    assert (sidecar == "native") == any(c["name"] == "sidecar-agent" for c in init)
