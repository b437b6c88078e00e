"""`--kubernetes-version auto`: the nodes listed over HTTPS with the service account's token, page by page, the
oldest kubelet used, a change seen on the next read and logged, and the safe fallback until a read succeeds and
whenever one fails."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.inject import Options
from agent.kube.nodes import PAGE, ApiServer, NodeListError, in_cluster, kubelet_versions
from agent.kube.versions import FALLBACK, Chosen, Source
from agent.webhook.kubelets import OldestKubelet
from agent.webhook.server import Settings, injection
from tests.servers import Certs
from tests.webhook.apiserver import Served, node, serve
from tests.webhook.reviews import pod

TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VydmljZWFjY291bnQ.c2lnbmF0dXJl"  # the shape of a projected token; a test value


@pytest.fixture
async def apiserver(certs: Certs, tmp_path: Path) -> AsyncIterator[Served]:
    served = await serve(certs, tmp_path, TOKEN, [node("a", "v1.31.2"), node("b", "v1.29.4"), node("c", "v1.30.0-eks-1")])
    try:
        yield served
    finally:
        await served.runner.cleanup()


def account(served: Served) -> ApiServer:
    return ApiServer(served.url, str(served.ca), str(served.token_file))


async def test_every_node_is_listed_in_pages_with_the_bearer_token(apiserver: Served) -> None:
    apiserver.api.nodes = [node(f"n{i}", "v1.33.1" if i != 1111 else "v1.28.9") for i in range(2 * PAGE + 203)]
    found = await kubelet_versions(account(apiserver))
    assert len(found) == 2 * PAGE + 203 and ("n1111", "v1.28.9") in found
    assert [r.get("continue") for r in apiserver.api.requests] == [None, str(PAGE), str(2 * PAGE)]
    assert {r["limit"] for r in apiserver.api.requests} == {str(PAGE)}
    assert {r["authorization"] for r in apiserver.api.requests} == {f"Bearer {TOKEN}"}


async def test_the_token_is_read_again_for_each_listing(apiserver: Served) -> None:
    api = account(apiserver)
    await kubelet_versions(api)
    apiserver.api.token = "renewed-token-by-the-kubelet"  # the kubelet rotates the projected token in place
    apiserver.token_file.write_text("renewed-token-by-the-kubelet\n")
    assert len(await kubelet_versions(api)) == 3


async def test_a_refusal_names_the_api_servers_reason_and_never_the_token(apiserver: Served) -> None:
    apiserver.api.forbidden = True
    with pytest.raises(NodeListError, match="HTTP 403: nodes is forbidden") as refused:
        await kubelet_versions(account(apiserver))
    assert TOKEN not in str(refused.value)
    apiserver.api.forbidden, apiserver.api.token = False, "another"
    with pytest.raises(NodeListError, match="HTTP 401") as refused:
        await kubelet_versions(account(apiserver))
    assert TOKEN not in str(refused.value)


async def test_a_server_the_clusters_ca_did_not_sign_is_refused(apiserver: Served, certs: Certs) -> None:
    _, other_ca = certs.make("not-the-cluster-ca", ip="127.0.0.1")
    with pytest.raises(NodeListError, match="CERTIFICATE_VERIFY_FAILED"):
        await kubelet_versions(ApiServer(apiserver.url, str(other_ca), str(apiserver.token_file)))


def test_in_cluster_reads_the_pods_environment_and_account_folder() -> None:
    api = in_cluster({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert api == ApiServer("https://10.96.0.1:443", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                            "/var/run/secrets/kubernetes.io/serviceaccount/token")
    assert in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}).url == "https://[fd00::1]:443"
    with pytest.raises(NodeListError, match="not in a cluster"):
        in_cluster({})


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agent.webhook"]


async def test_the_oldest_kubelet_is_used_and_a_change_is_seen_and_logged(apiserver: Served,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    reads: list[bool] = []
    kubelets = OldestKubelet(lambda: kubelet_versions(account(apiserver)), on_read=reads.append)
    assert kubelets.current == Chosen(FALLBACK, Source.FALLBACK)  # before the first read
    with caplog.at_level(logging.INFO, logger="agent.webhook"):
        assert await kubelets.read()
        assert kubelets.current == Chosen((1, 29), Source.NODES)
        assert await kubelets.read()  # the same answer: no new line
        apiserver.api.nodes.append(node("old", "v1.28.15"))
        assert await kubelets.read()
        assert kubelets.current == Chosen((1, 28), Source.NODES)
    lines = messages(caplog)
    assert len(lines) == 2, lines
    assert "injecting for Kubernetes 1.29 (native sidecar, httpGet hook) instead of 1.28 (fallback)" in lines[0]
    assert "injecting for Kubernetes 1.28 (regular container) instead of 1.29 (nodes): the oldest kubelet of 4 nodes" \
        in lines[1]
    assert reads == [True, True, True]


async def test_a_failed_read_falls_back_once_logged_and_counts_each_time(apiserver: Served,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    reads: list[bool] = []
    kubelets = OldestKubelet(lambda: kubelet_versions(account(apiserver)), on_read=reads.append)
    await kubelets.read()
    apiserver.api.forbidden = True
    with caplog.at_level(logging.INFO, logger="agent.webhook"):
        assert not await kubelets.read()
        assert kubelets.current == Chosen(FALLBACK, Source.FALLBACK)
        assert not await kubelets.read()
        assert not await kubelets.read()
        apiserver.api.forbidden = False
        assert await kubelets.read()
    lines = messages(caplog)
    assert len(lines) == 2, lines
    assert "instead of 1.29 (nodes): the nodes cannot be read" in lines[0] and "HTTP 403" in lines[0]
    assert "injecting for Kubernetes 1.29" in lines[1]
    assert reads == [True, False, False, False, True]
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


async def test_a_node_without_a_version_is_a_failed_read(apiserver: Served) -> None:
    kubelets = OldestKubelet(lambda: kubelet_versions(account(apiserver)))
    apiserver.api.nodes.append({"metadata": {"name": "new"}, "status": {}})  # registered, not yet reporting
    assert not await kubelets.read()
    assert kubelets.current.source is Source.FALLBACK


async def test_each_review_injects_for_the_version_known_at_that_moment(apiserver: Served) -> None:
    kubelets = OldestKubelet(lambda: kubelet_versions(account(apiserver)))
    mutate, _ = injection(Settings(cert="", key="", options=Options()), kubelets)

    def status() -> tuple[str, str, str]:
        annotations = mutate({"metadata": pod()["metadata"], "spec": pod()["spec"]}).template["metadata"]["annotations"]
        found = json.loads(annotations["sidecar-agent.io/status"])
        return found["kubernetes"], found["kubernetes_from"], found["sidecar"]

    assert status() == ("1.28", "fallback", "regular")
    await kubelets.read()
    assert status() == ("1.29", "nodes", "native")
