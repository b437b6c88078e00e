"""The cluster as the tests see it: tools/cluster.py driven as a command, kubectl, images, and what a teardown leaves."""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
AGENT_IMAGE = "sidecar-agent:0.1.0"
BASE_IMAGE = "docker.io/library/python:3.12-slim"
APP_IMAGE = "localhost/cluster-test-app:1"


def load_tool() -> ModuleType:
    """tools/cluster.py as a module (tools/ is no package), for its constants and its teardown checks."""
    spec = importlib.util.spec_from_file_location("cluster_tool", ROOT / "tools" / "cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool()
STATE = pathlib.Path(os.environ.get("SIDECAR_AGENT_CLUSTER_STATE") or tool.DEFAULT_STATE)


def cluster_cmd(*args: str, env: dict[str, str] | None = None, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """tools/cluster.py ARGS with the tests' state dir; its output captured."""
    return subprocess.run([sys.executable, str(ROOT / "tools" / "cluster.py"), *args, "--state", str(STATE)],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False)


def wait_until(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """tools/cluster.py's wait_for (probe()'s first true value), failing as a test does: an AssertionError naming
    `what` (test_60's cases each catch theirs)."""
    try:
        return tool.wait_for(what, probe, timeout, interval)
    except tool.ClusterError as exc:
        raise AssertionError(str(exc)) from None


class Cluster:
    """kubectl on the harness's cluster."""

    def __init__(self, state: pathlib.Path) -> None:
        self.paths = tool.State(state)  # tools/cluster.py's names for what the state directory holds
        self.base: list[str] = tool.kubectl_cmd(self.paths)  # kubectl with the admin kubeconfig

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """kubectl ARGS; an AssertionError with its stderr when it fails and check is set."""
        proc = subprocess.run([*self.base, *args], input=stdin,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def apply(self, manifest: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """Server-side apply of YAML text."""
        return self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", *extra, stdin=manifest)

    def get(self, *args: str) -> Any:
        """kubectl get ... -o json, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        """Creates a namespace afresh (deleting a leftover one of that name first)."""
        self.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true", timeout=180)
        meta: dict[str, Any] = {"name": name}
        if labels:
            meta["labels"] = labels
        self.apply(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": meta}))
        wait_until(f"the default service account of {name}",
                   lambda: self.kubectl("get", "-n", name, "serviceaccount", "default", check=False).returncode == 0, 60)
        return name

    def existing_namespace(self, name: str) -> str:
        """The namespace as it is, or made (with namespace()) when missing: for modules whose tests share it."""
        if self.kubectl("get", "namespace", name, check=False).returncode != 0:
            self.namespace(name)
        return name

    def job_outcome(self, namespace: str, name: str = "") -> str | None:
        """`Complete` or `Failed` once a Job (or the first of the namespace's Jobs to finish) has finished; else None."""
        jobs = [self.get("job", "-n", namespace, name)] if name else self.get("jobs", "-n", namespace)["items"]
        for job in jobs:
            for cond in job.get("status", {}).get("conditions", []):
                if cond["status"] == "True" and cond["type"] in ("Complete", "Failed"):
                    return str(cond["type"])
        return None

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        """The pods of a namespace, optionally selected by labels."""
        args = ["pods", "-n", namespace] + (["-l", selector] if selector else [])
        return list(self.get(*args)["items"])

    def wait_ready(self, namespace: str, selector: str, count: int, timeout: float = 90) -> list[dict[str, Any]]:
        """Waits until exactly `count` pods match and every one is Ready (and not terminating)."""

        def ready() -> list[dict[str, Any]] | None:
            pods = [p for p in self.pods(namespace, selector) if not p["metadata"].get("deletionTimestamp")]
            ok = [p for p in pods if condition(p, "Ready")]
            return pods if len(pods) == count and len(ok) == count else None

        return list(wait_until(f"{count} Ready pods {selector} in {namespace}", ready, timeout, 1.0))


def condition(pod: dict[str, Any], kind: str) -> bool:
    """Whether a pod's condition of that type (Ready, Initialized...) is True."""
    return any(c["type"] == kind and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def timestamp(text: str) -> float:
    """An API time (2026-12-07T20:47:04Z) as seconds since the epoch."""
    return datetime.datetime.fromisoformat(text).timestamp()


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    """A container's (or init container's) status in a pod."""
    status = pod["status"]
    for item in status.get("containerStatuses", []) + status.get("initContainerStatuses", []):
        if item["name"] == name:
            return dict(item)
    raise AssertionError(f"no status for container {name} in {pod['metadata']['name']}")


def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """One GET over a new connection: (status, body)."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


class Sniffer:
    """Collects the IPv4 TCP payloads crossing an interface for a time (the kubelet's probe requests)."""

    def __init__(self, interface: str) -> None:
        # ETH_P_ALL: a socket for one protocol sees only the frames coming in, not those the host sends.
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind((interface, 0))
        self.sock.settimeout(0.2)

    def collect(self, seconds: float) -> list[bytes]:
        """The TCP payloads of the frames seen during `seconds`."""
        payloads = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                frame = self.sock.recv(65535)
            except TimeoutError:
                continue
            ip = frame[14:]
            if frame[12:14] != b"\x08\x00" or len(ip) < 20 or ip[9] != 6:  # IPv4 TCP only
                continue
            tcp = ip[(ip[0] & 0x0F) * 4:]
            payload = tcp[(tcp[12] >> 4) * 4:]
            if payload:
                payloads.append(payload)
        return payloads

    def close(self) -> None:
        """Closes the socket."""
        self.sock.close()


def leftovers(state: pathlib.Path) -> dict[str, list[str]]:
    """Everything of the harness still on the machine: processes, mounts, netns, links, chains, cgroups."""
    found: dict[str, list[str]] = {}
    procs = []
    in_cgroups = set(tool.cgroup_pids())
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                # By the state dir in its command line (every daemon and shim names it) or by the harness's cgroup;
                # not by the binaries' path, which other tests of the machine may run on their own.
                if str(state) in cmdline or int(proc.name) in in_cgroups:
                    procs.append(f"{proc.name}: {cmdline[:200]}")
    found["processes"] = procs
    found["mounts"] = tool.mounts_under(state)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split()
    found["netns"] = [n for n in netns if n.startswith("cni-")]
    if (state / "containerd").exists():
        found["netns"].append(f"{state / 'containerd'} still exists")
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout)
    found["links"] = [link["ifname"] for link in links if link["ifname"] == tool.BRIDGE or link.get("master") == tool.BRIDGE]
    found["iptables chains"] = [f"{t} {table} {c}" for (t, table), chains in tool.harness_chains().items() for c in chains]
    found["cgroups"] = [str(p) for p in tool._cgroup_dirs() if p.exists()]
    return {k: v for k, v in found.items() if v}


def install_webhook(cluster: Cluster) -> None:
    """deploy/webhook/ as docs/webhook.md installs it without cert-manager: make-certs.sh's Secret, webhook.yaml,
    mutatingwebhook.yaml and the caBundle patch (idempotent: a second call re-applies the same objects)."""
    webhook = ROOT / "deploy" / "webhook"
    existing = cluster.kubectl("get", "mutatingwebhookconfiguration", "sidecar-agent", "-o", "json", check=False)
    if existing.returncode == 0 and all(w["clientConfig"].get("caBundle") for w in json.loads(existing.stdout)["webhooks"]):
        return  # installed: new certificates now would not match the serving pair the running pods hold
    # The namespace first (webhook.yaml's first document): the Secret goes into it.
    cluster.apply((webhook / "webhook.yaml").read_text().split("\n---", 1)[0])
    out = tempfile.mkdtemp(prefix="webhook-certs-")
    try:
        subprocess.run(["sh", str(webhook / "make-certs.sh"), out], check=True, capture_output=True)
        cluster.kubectl("apply", "-f", f"{out}/secret.yaml")
        cluster.apply((webhook / "webhook.yaml").read_text())
        cluster.apply((webhook / "mutatingwebhook.yaml").read_text())
        cluster.kubectl("patch", "mutatingwebhookconfiguration", "sidecar-agent", "--type=json",
                        "--patch-file", f"{out}/cabundle-patch.json")
    finally:
        shutil.rmtree(out, ignore_errors=True)
