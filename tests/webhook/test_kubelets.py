"""`--kubernetes-version auto` finds the API server as a pod does. Listing the nodes against a real kube-apiserver
(pages, the token, refusals, the fallback, the webhook process in a pod) is tests/apiserver/test_node_listing.py."""

from __future__ import annotations

import pytest

from agent.kube.api import ApiServer, in_cluster
from agent.kube.nodes import NodeListError


def test_in_cluster_reads_the_pods_environment_and_account_folder() -> None:
    api = in_cluster({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert api == ApiServer("https://10.96.0.1:443", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                            "/var/run/secrets/kubernetes.io/serviceaccount/token")
    assert in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}).url == "https://[fd00::1]:443"
    with pytest.raises(NodeListError, match="not in a cluster"):
        in_cluster({})
