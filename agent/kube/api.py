"""The API server as a pod reaches it: where it is, its CA, and the service account's token, read when used.

In a pod the API server is at $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; its CA and the service account's
token are files under /var/run/secrets/kubernetes.io/serviceaccount. The token is a projected one that the kubelet
renews (about hourly), so it is read again for every request. It never reaches a log or an error message. Used by
the webhook's node listing (agent.kube.nodes) and the agent's EndpointSlice watch (agent.kube.endpoints_client).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.units import format_address

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiUnavailable(Exception):
    """The API server cannot be asked; the message says why (never with the token)."""


@dataclass(frozen=True)
class ApiServer:
    """Where the API server is and how to authenticate to it."""

    url: str  # https://HOST:PORT
    ca_file: str
    token_file: str

    def context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the cluster's CA only and checks the server's name."""
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ApiUnavailable(f"cannot load the cluster's CA {self.ca_file}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None

    def token(self) -> str:
        """The token as it is now (the kubelet rewrites the file before it expires)."""
        try:
            with open(self.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ApiUnavailable(f"cannot read the service account token {self.token_file}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
        if not token:
            raise ApiUnavailable(f"the service account token {self.token_file} is empty")
        return token

    def headers(self) -> dict[str, str]:
        """A request's headers: the token as it is now (ApiUnavailable when it cannot be read), JSON accepted."""
        return {"Authorization": f"Bearer {self.token()}", "Accept": "application/json"}


def in_cluster(env: Mapping[str, str], account: Path = SERVICE_ACCOUNT) -> ApiServer:
    """The API server as a pod sees it; ApiUnavailable when this is not a pod (the files are read when used)."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT") or "443"
    if not host:
        raise ApiUnavailable("KUBERNETES_SERVICE_HOST is not set (not in a cluster)")
    if not port.isdigit():
        raise ApiUnavailable(f"KUBERNETES_SERVICE_PORT is not a port: {port!r}")
    return ApiServer(f"https://{format_address(host, int(port))}", str(account / "ca.crt"), str(account / "token"))
