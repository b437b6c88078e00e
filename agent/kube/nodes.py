"""The nodes' kubelet versions, read from the API server with the pod's service account (agent.kube.api): plain
HTTPS over aiohttp, the token read again for every page."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from agent.kube.api import ApiServer, ApiUnavailable

PAGE = 500  # nodes per request: a large cluster's list comes in pages, never as one body of many megabytes
TIMEOUT_SECONDS = 10.0
MAX_PAGES = 200  # 100 000 nodes: a server that keeps answering `continue` cannot hold the reader forever

# One error for every way the listing fails, the API's credentials included (agent.kube.api).
NodeListError = ApiUnavailable


async def kubelet_versions(api: ApiServer, session: aiohttp.ClientSession | None = None) -> list[tuple[str, str]]:
    """(node name, status.nodeInfo.kubeletVersion) of every node, page by page; NodeListError on any failure."""
    context = api.context()
    own = session is None
    if session is None:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS))
    try:
        found: list[tuple[str, str]] = []
        token = ""
        for _ in range(MAX_PAGES):
            page = await _get(session, api, context, f"/api/v1/nodes?limit={PAGE}"
                              + (f"&continue={quote(token, safe='')}" if token else ""))
            found += [_version(item, len(found) + i) for i, item in enumerate(page.get("items") or [])]
            metadata = page.get("metadata")
            token = str(metadata.get("continue") or "") if isinstance(metadata, Mapping) else ""
            if not token:
                return found
        raise NodeListError(f"the node list did not end after {MAX_PAGES} pages")
    finally:
        if own:
            await session.close()


async def _get(session: aiohttp.ClientSession, api: ApiServer, context: ssl.SSLContext, path: str) -> Mapping[str, Any]:
    try:
        async with session.get(api.url + path, headers=api.headers(), ssl=context, allow_redirects=False) as response:
            body = await response.read()
            status = response.status
    except aiohttp.ClientError as exc:
        raise NodeListError(f"GET {api.url}/api/v1/nodes: {type(exc).__name__}: {exc}") from None
    except TimeoutError:
        raise NodeListError(f"GET {api.url}/api/v1/nodes: no answer within {TIMEOUT_SECONDS:g}s") from None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status != 200:
        # The API server explains a refusal in a Status object (403: the RBAC rule is missing).
        message = data.get("message") if isinstance(data, Mapping) else None
        raise NodeListError(f"GET {api.url}/api/v1/nodes: HTTP {status}" + (f": {message}" if message else ""))
    if not isinstance(data, Mapping) or data.get("kind") != "NodeList":
        raise NodeListError(f"GET {api.url}/api/v1/nodes: the answer is not a NodeList")
    return data


def _version(item: Any, index: int) -> tuple[str, str]:
    """(name, kubeletVersion) of one item; a node without them gives an empty version, which `oldest` refuses."""
    node = item if isinstance(item, Mapping) else {}
    metadata, status = node.get("metadata"), node.get("status")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    info = status.get("nodeInfo") if isinstance(status, Mapping) else None
    version = info.get("kubeletVersion") if isinstance(info, Mapping) else None
    return str(name or f"#{index}"), str(version or "")
