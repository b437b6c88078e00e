"""Benchmark of the endpoints drain (issue 20): what the EndpointSlice watch costs the agent, and the client's choice.

Run as `.venv/bin/python bench/bench_endpoints.py` from the repository root (about 5 minutes).

Parts:
- `client`: resident memory that each way of talking to the API adds to an interpreter that already holds the
  agent's stack: the agent's own module over plain aiohttp (agent.kube.endpoints_client), against
  kubernetes_asyncio and kr8s, measured in a separate venv given by `--library-python` (pip install
  kubernetes-asyncio kr8s there). Target: the chosen client adds at most 1 MiB.
- `agent`: the agent (`sidecar-agent run`, no checks) with shutdown.endpoints off and on, against a real etcd and
  kube-apiserver on loopback (tests/apiserver/harness.py) whose namespace holds `--slices` EndpointSlices of other
  pods and one that lists the agent's: RSS after settling, and CPU over an idle window (utime + stime from
  /proc/PID/stat), each setting run `--rounds` times alternately.

Every interpreter it starts reads compiled modules, as in the image (which ships its .pyc files): with
PYTHONDONTWRITEBYTECODE set, as on the development machines, each start would compile the agent's modules again,
and the compiler's scratch memory stays in the heap (+0.4 MiB for the watch's two modules alone). So the bench
compiles into a pycache of its own (PYTHONPYCACHEPREFIX) in a first, unmeasured start of each kind.

Every process it starts is stopped by its pid; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.testing import run_agent  # noqa: E402
from tests.apiserver.harness import ApiServer, missing, running  # noqa: E402

RSS_SCRIPT = """
import gc, sys
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
for name in sys.argv[1].split(","):
    __import__(name)
gc.collect()
before = rss()
for name in sys.argv[2].split(","):
    __import__(name)
gc.collect()
print(rss() - before)
"""
# The agent's stack as the daemon imports it (aiohttp, prometheus_client, psutil, yaml, ssl).
AGENT_STACK = "agent.runtime.daemon"
LIBRARY_STACK = "aiohttp,aiohttp.web,ssl,json,asyncio,logging"
LIBRARIES = {
    "kubernetes_asyncio": "kubernetes_asyncio.client,kubernetes_asyncio.watch,kubernetes_asyncio.config",
    "kr8s": "kr8s.asyncio",
}


PYCACHE = tempfile.mkdtemp(prefix="bench-endpoints-pycache-")
atexit.register(shutil.rmtree, PYCACHE, ignore_errors=True)  # also when a round fails
# Over os.environ, for every measured interpreter: modules compiled once into PYCACHE, then read from it (an empty
# PYTHONDONTWRITEBYTECODE is the same as none).
COMPILED = {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": PYCACHE}


def added_kib(python: str, base: str, more: str, rounds: int = 5) -> int:
    """The median RSS (KiB) that importing `more` adds after `base`, each round in a fresh interpreter (after an
    unmeasured one that compiles the modules)."""
    values = []
    for index in range(rounds + 1):
        done = subprocess.run([python, "-c", RSS_SCRIPT, base, more], capture_output=True, text=True, check=True,
                              timeout=120, cwd=ROOT, env={**os.environ, **COMPILED})
        if index == 0:
            continue
        values.append(int(done.stdout.strip()))
    return int(statistics.median(values))


def part_client(library_python: str | None) -> dict[str, object]:
    out: dict[str, object] = {"plain aiohttp (agent.kube.endpoints_client)":
                              added_kib(sys.executable, AGENT_STACK, "agent.kube.endpoints_client")}
    if library_python:
        for name, modules in LIBRARIES.items():
            try:
                out[name] = added_kib(library_python, LIBRARY_STACK, modules)
            except subprocess.CalledProcessError as exc:
                out[name] = f"not measured: {exc.stderr.strip().splitlines()[-1:]}"
    return out


def slice_body(name: str, pod: str, ip: str, ns: str) -> dict[str, object]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": name}},
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "namespace": ns, "name": pod}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def prepare(api: ApiServer, root: Path, slices: int) -> tuple[str, Path]:
    """A namespace with `slices` slices of other pods and one of the agent's; the agent's service-account dir."""
    ns = "bench"
    api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    api.call("POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
             {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web"}})
    api.call("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "endpoints"},
        "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                   "verbs": ["get", "list", "watch"]}, {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    api.call("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "endpoints"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "endpoints"},
        "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": ns}]})
    path = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
    for i in range(slices):
        api.call("POST", path, slice_body(f"other-{i}", f"other-{i}", f"10.2.{i // 250}.{i % 250 + 1}", ns))
    api.call("POST", path, slice_body("web", "web-0", "10.1.0.7", ns))
    token = api.call("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/web/token",
                     {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                      "spec": {"expirationSeconds": 3600}})["status"]["token"]
    account = root / "sa"
    account.mkdir()
    (account / "token").write_text(token)
    (account / "ca.crt").write_bytes((api.pki / "ca.crt").read_bytes())
    (account / "namespace").write_text(ns)
    return ns, account


def agent_round(api: ApiServer, ns: str, account: Path, endpoints: bool, settle: float,
                idle: float) -> tuple[int, float]:
    """(RSS KiB after settling, CPU % of a core over the idle window) of one agent."""
    config = "checks: {}\nshutdown: {drain_delay: 5s" + (", endpoints: {enabled: true}}" if endpoints else "}") + "\n"
    env = {**COMPILED, "KUBERNETES_SERVICE_HOST": api.host, "KUBERNETES_SERVICE_PORT": str(api.port),
           "POD_NAME": "web-0", "POD_NAMESPACE": ns, "POD_IPS": "10.1.0.7",
           "SIDECAR_AGENT_SERVICE_ACCOUNT_DIR": str(account)}
    with run_agent(config, env=env) as agent:
        process = psutil.Process(agent.proc.pid)
        time.sleep(settle)
        assert agent.proc.poll() is None, "the agent exited"
        rss = process.memory_info().rss // 1024
        cpu0, t0 = cpu_seconds(process), time.monotonic()
        time.sleep(idle)
        cpu = (cpu_seconds(process) - cpu0) / (time.monotonic() - t0) * 100
        if endpoints:  # read after the figures: they are the watch's only if it ran (not the timer's fallback)
            state = agent.status()["endpoints"]
            assert state["live"], f"the watch is not live: {state['state']}, {state['reason']}"
        return rss, cpu


def cpu_seconds(process: psutil.Process) -> float:
    used = process.cpu_times()
    return float(used.user + used.system)


def part_agent(rounds: int, slices: int, settle: float, idle: float) -> dict[str, object]:
    if missing():
        return {"skipped": f"{', '.join(missing())} not built"}
    with tempfile.TemporaryDirectory() as tmp, running(Path(tmp) / "api") as api:
        ns, account = prepare(api, Path(tmp), slices)
        results: dict[bool, list[tuple[int, float]]] = {False: [], True: []}
        for endpoints in (False, True):  # unmeasured: compiles every module either kind imports
            agent_round(api, ns, account, endpoints, settle, 0.0)
        for _ in range(rounds):
            for endpoints in (False, True):
                results[endpoints].append(agent_round(api, ns, account, endpoints, settle, idle))
    out: dict[str, object] = {"slices in the namespace": slices + 1, "rounds": rounds, "idle window s": idle}
    for endpoints, runs in results.items():
        key = "watch on" if endpoints else "watch off"
        out[key] = {"rss MiB": [round(r / 1024, 2) for r, _ in runs],
                    "rss median MiB": round(statistics.median(r for r, _ in runs) / 1024, 2),
                    "idle cpu % of a core": [round(c, 3) for _, c in runs],
                    "idle cpu median %": round(statistics.median(c for _, c in runs), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("client", "agent"), action="append")
    parser.add_argument("--library-python", help="an interpreter with kubernetes_asyncio and kr8s installed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    parts = args.part or ["client", "agent"]
    report: dict[str, object] = {}
    if "client" in parts:
        report["client: RSS added by the import, KiB (median of 5)"] = part_client(args.library_python)
        print(json.dumps(report, indent=1), flush=True)
    if "agent" in parts:
        report["agent"] = part_agent(args.rounds, args.slices, args.settle, args.idle)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
