"""`--kubernetes-version auto` against a real kube-apiserver: the nodes listed over HTTPS with the webhook's service
account token (the RBAC of deploy/webhook/webhook.yaml), page by page, the oldest kubelet used, a change seen on the
next read and logged, the safe fallback until a read succeeds and whenever one fails; and the webhook process doing
all this as in a pod.

Nodes are made as a kubelet makes them: the Node created, then its status (nodeInfo.kubeletVersion) written through
the status subresource. Nothing runs on them: this API server has no controller that would touch them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agent.inject import Options
from agent.kube import nodes as node_list
from agent.kube.api import ApiServer as Account
from agent.kube.nodes import NodeListError, kubelet_versions
from agent.kube.versions import FALLBACK, Chosen, Source
from agent.webhook.kubelets import OldestKubelet
from agent.webhook.server import Settings, injection
from tests.apiserver.conftest import Namespace
from tests.apiserver.harness import ApiFailure, ApiServer
from tests.cluster.harness import ROOT
from tests.servers import Certs
from tests.webhook.reviews import client_context, patched, pod, review

# The session's API server may first be built (tools/cluster.py build): only the test itself is timed.
pytestmark = pytest.mark.timeout(120, func_only=True)

WEBHOOK = ROOT / "deploy" / "webhook" / "webhook.yaml"
NAMESPACE, ACCOUNT = "sidecar-agent", "sidecar-agent-webhook"  # as deploy/webhook/webhook.yaml names them
# Where each kind of that manifest is created; the others (Deployment, PodDisruptionBudget, Service) would run the
# webhook, which the test does itself.
CREATE = {"Namespace": "/api/v1/namespaces", "ServiceAccount": f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
          "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
          "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"}
BOUND = 60.0  # a bound for a hang only
IN_POD = "/var/run/secrets/kubernetes.io/serviceaccount"


def lists_nodes(api: ApiServer, token: str) -> bool:
    """Whether TOKEN may list the nodes yet (the RBAC authorizer sees a new binding a moment after it is made)."""
    return api.status_as(token, "/api/v1/nodes?limit=1") == 200


@pytest.fixture(scope="module")
def webhook_token(apiserver: ApiServer) -> str:
    """A token of the webhook's service account, with the ClusterRole and binding of deploy/webhook/webhook.yaml
    applied as shipped (once per session: what exists already is kept)."""
    for doc in yaml.safe_load_all(WEBHOOK.read_text()):
        if doc["kind"] in CREATE:
            try:
                apiserver.call("POST", CREATE[doc["kind"]], doc)
            except ApiFailure as exc:
                if exc.status != 409:
                    raise
    token = Namespace(apiserver, NAMESPACE).token(ACCOUNT)
    deadline = time.monotonic() + BOUND
    while not lists_nodes(apiserver, token):
        assert time.monotonic() < deadline, f"the manifest's ClusterRole never let {ACCOUNT} list the nodes"
        time.sleep(0.2)
    return token


def make_node(api: ApiServer, name: str, kubelet: str | None) -> None:
    """Register a node, and report its kubelet's version as the kubelet does (None: registered, not yet reporting)."""
    api.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    if kubelet is not None:
        info = {"kubeletVersion": kubelet, "kubeProxyVersion": kubelet, "containerRuntimeVersion": "containerd://1.7.22",
                "operatingSystem": "linux", "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "", "osImage": ""}
        api.call("PATCH", f"/api/v1/nodes/{name}/status", {"status": {"nodeInfo": info}},
                 content_type="application/merge-patch+json")


@pytest.fixture
def nodes(apiserver: ApiServer) -> Iterator[Callable[..., None]]:
    """`nodes(("a", "v1.31.2"), ...)` makes nodes; every node is deleted after the test."""
    def make(*pairs: tuple[str, str | None]) -> None:
        for name, kubelet in pairs:
            make_node(apiserver, name, kubelet)
    yield make
    apiserver.call("DELETE", "/api/v1/nodes")


@pytest.fixture
def three(nodes: Callable[..., None]) -> None:
    nodes(("a", "v1.31.2"), ("b", "v1.29.4"), ("c", "v1.30.0-eks-1"))


@pytest.fixture
def account(apiserver: ApiServer, webhook_token: str, tmp_path: Path) -> Account:
    """The webhook's account as its pod sees it: the cluster's CA and a token file the kubelet may rewrite."""
    token_file = tmp_path / "token"
    token_file.write_text(webhook_token)
    return Account(apiserver.base, str(apiserver.pki / "ca.crt"), str(token_file))


@pytest.fixture
def ungranted(namespace: Namespace) -> str:
    """A token of a service account that no role lets list the nodes."""
    namespace.service_account("nobody")
    return namespace.token("nobody")


async def test_every_node_is_listed_in_pages(nodes: Callable[..., None], account: Account,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Pages of 2 (the real PAGE is 500): five nodes come in three pages, the server's continue tokens passed back.
    monkeypatch.setattr(node_list, "PAGE", 2)
    made = [(f"n{i}", "v1.28.9" if i == 3 else "v1.33.1") for i in range(5)]
    nodes(*made)
    urls: list[str] = []

    async def sent(session: object, context: object, params: aiohttp.TraceRequestStartParams) -> None:
        urls.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(sent)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        found = await kubelet_versions(account, session)
    assert sorted(found) == made
    assert len(urls) == 3 and all("limit=2" in url for url in urls), urls
    assert "continue=" not in urls[0] and all("continue=" in url for url in urls[1:]), urls


async def test_the_token_is_read_again_for_each_listing(three: None, account: Account, ungranted: str) -> None:
    assert len(await kubelet_versions(account)) == 3
    Path(account.token_file).write_text(ungranted + "\n")  # the kubelet rewrites the projected token in place
    with pytest.raises(NodeListError, match=r'User "system:serviceaccount:t-[0-9a-f]+:nobody"'):
        await kubelet_versions(account)


async def test_a_refusal_names_the_api_servers_reason_and_never_the_token(account: Account, ungranted: str) -> None:
    Path(account.token_file).write_text(ungranted)
    with pytest.raises(NodeListError, match="HTTP 403: nodes is forbidden") as refused:
        await kubelet_versions(account)
    assert ungranted not in str(refused.value)
    Path(account.token_file).write_text("not-a-token-this-server-issued")
    with pytest.raises(NodeListError, match="HTTP 401") as refused:
        await kubelet_versions(account)
    assert "not-a-token" not in str(refused.value)


async def test_a_server_the_clusters_ca_did_not_sign_is_refused(account: Account, certs: Certs) -> None:
    _, other_ca = certs.make("not-the-cluster-ca", ip="127.0.0.1")
    with pytest.raises(NodeListError, match="CERTIFICATE_VERIFY_FAILED"):
        await kubelet_versions(Account(account.url, str(other_ca), account.token_file))


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agent.webhook"]


async def test_the_oldest_kubelet_is_used_and_a_change_is_seen_and_logged(
        three: None, nodes: Callable[..., None], account: Account, caplog: pytest.LogCaptureFixture) -> None:
    reads: list[bool] = []
    kubelets = OldestKubelet(lambda: kubelet_versions(account), on_read=reads.append)
    assert kubelets.current == Chosen(FALLBACK, Source.FALLBACK)  # before the first read
    with caplog.at_level(logging.INFO, logger="agent.webhook"):
        assert await kubelets.read()
        assert kubelets.current == Chosen((1, 29), Source.NODES)
        assert await kubelets.read()  # the same answer: no new line
        nodes(("old", "v1.28.15"))
        assert await kubelets.read()
        assert kubelets.current == Chosen((1, 28), Source.NODES)
    lines = messages(caplog)
    assert len(lines) == 2, lines
    assert "injecting for Kubernetes 1.29 (native sidecar, httpGet hook) instead of 1.28 (fallback)" in lines[0]
    assert "injecting for Kubernetes 1.28 (regular container) instead of 1.29 (nodes): the oldest kubelet of 4 nodes" \
        in lines[1]
    assert reads == [True, True, True]


async def test_a_failed_read_falls_back_once_logged_and_counts_each_time(
        three: None, account: Account, ungranted: str, webhook_token: str, caplog: pytest.LogCaptureFixture) -> None:
    reads: list[bool] = []
    kubelets = OldestKubelet(lambda: kubelet_versions(account), on_read=reads.append)
    await kubelets.read()
    Path(account.token_file).write_text(ungranted)
    with caplog.at_level(logging.INFO, logger="agent.webhook"):
        assert not await kubelets.read()
        assert kubelets.current == Chosen(FALLBACK, Source.FALLBACK)
        assert not await kubelets.read()
        assert not await kubelets.read()
        Path(account.token_file).write_text(webhook_token)
        assert await kubelets.read()
    lines = messages(caplog)
    assert len(lines) == 2, lines
    assert "instead of 1.29 (nodes): the nodes cannot be read" in lines[0] and "HTTP 403" in lines[0]
    assert "injecting for Kubernetes 1.29" in lines[1]
    assert reads == [True, False, False, False, True]
    assert all(webhook_token not in r.getMessage() and ungranted not in r.getMessage() for r in caplog.records)


async def test_a_node_without_a_version_is_a_failed_read(three: None, nodes: Callable[..., None],
                                                         account: Account) -> None:
    kubelets = OldestKubelet(lambda: kubelet_versions(account))
    nodes(("new", None))  # registered, not yet reporting
    assert not await kubelets.read()
    assert kubelets.current.source is Source.FALLBACK


async def test_each_review_injects_for_the_version_known_at_that_moment(three: None, account: Account) -> None:
    kubelets = OldestKubelet(lambda: kubelet_versions(account))
    mutate, _ = injection(Settings(cert="", key="", options=Options()), kubelets)

    def status() -> tuple[str, str, str]:
        annotations = mutate({"metadata": pod()["metadata"], "spec": pod()["spec"]}).template["metadata"]["annotations"]
        found = json.loads(annotations["sidecar-agent.io/status"])
        return found["kubernetes"], found["kubernetes_from"], found["sidecar"]

    assert status() == ("1.28", "fallback", "regular")
    await kubelets.read()
    assert status() == ("1.29", "nodes", "native")


async def test_the_webhook_process_injects_for_the_oldest_kubelet_the_api_server_lists(
        apiserver: ApiServer, nodes: Callable[..., None], webhook_token: str, certs: Certs, tmp_path: Path) -> None:
    """The webhook process as in a pod: the API server from KUBERNETES_SERVICE_HOST/PORT, its CA and the token from
    the service account folder (a tmpfs over /run in a mount namespace that only the webhook sees)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:  # fails with the reason, never skips (tools/test.py: root)
        pytest.fail("needs root and unshare(1) to give the webhook a pod's service account folder in a mount namespace")
    nodes(("a", "v1.31.2"), ("b", "v1.29.4"))
    key, cert = certs.make("webhook", dns_name="localhost", ip="127.0.0.1")
    token_file = tmp_path / "token"
    token_file.write_text(webhook_token)
    script = (f"mount -t tmpfs tmpfs /run && mkdir -p {IN_POD} && cp {apiserver.pki / 'ca.crt'} {IN_POD}/ca.crt && "
              f"cp {token_file} {IN_POD}/token && exec \"$0\" \"$@\"")
    env = {**os.environ, "KUBERNETES_SERVICE_HOST": apiserver.host, "KUBERNETES_SERVICE_PORT": str(apiserver.port)}
    process = await asyncio.create_subprocess_exec(
        "unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable, "-m", "agent", "webhook",
        "--tls-cert", str(cert), "--tls-key", str(key), "--listen", "127.0.0.1:0", "--kubernetes-version",
        "auto", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    seen: list[str] = []

    async def line_with(text: str) -> str:
        assert process.stdout is not None
        while True:
            line = (await asyncio.wait_for(process.stdout.readline(), BOUND)).decode()
            seen.append(line)
            if text in line:
                return line
            assert line, f"no line with {text!r} in:\n{''.join(seen)}"

    try:
        listen = json.loads(await line_with("webhook serving on"))["listen"]
        changed = json.loads(await line_with("injecting for Kubernetes 1.29"))
        assert (changed["kubernetes"], changed["kubernetes_from"]) == ("1.29", "nodes")
        connector = aiohttp.TCPConnector(ssl=client_context(cert))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(f"https://{listen}/inject", json=review(pod())) as answer:
                response: dict[str, Any] = (await answer.json())["response"]
            async with session.get(f"https://{listen}/metrics") as answer:
                metrics = await answer.text()
        assert 'sidecar_webhook_node_reads_total{result="success"} 1.0' in metrics
        created = patched(pod(), response)
        status = json.loads(created["metadata"]["annotations"]["sidecar-agent.io/status"])
        assert (status["kubernetes"], status["kubernetes_from"], status["sidecar"]) == ("1.29", "nodes", "native")
        process.send_signal(signal.SIGTERM)
        await line_with("webhook stopped")
        assert await asyncio.wait_for(process.wait(), BOUND) == 0
        assert webhook_token not in "".join(seen)
        assert not [line for line in seen if '"level": "error"' in line or "Traceback" in line], seen
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
