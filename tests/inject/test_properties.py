"""Property tests of `sidecar-agent inject` over random valid workloads (issue 21).

The corpus (test_corpus.py) is a dozen hand-picked shapes; real manifests vary along many axes at once. Here each
example is one workload, strict-valid for the Kubernetes version it is injected for, drawn along these axes:
- the kind: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob;
- one to three app containers with named and numbered ports;
- every probe handler (httpGet with a named or numbered port, HTTPS, headers or another host; tcpSocket; grpc;
  exec of grpc_health_probe or of anything else), with its timings;
- the user's own preStop hooks of each type (a sleep action, `exec sleep N`, a shell script, an exec without a
  shell, an httpGet to the container's own port), and grace periods from 0 to 600 s;
- init containers, and native sidecars already there (a mesh proxy, a log shipper);
- Guaranteed and Burstable resources;
- secrets in env (secretKeyRef), used by the checks annotation;
- the opt-out (label or annotation) and the checks annotation (valid, or refused: exit 2);
- hostNetwork, and the agent's port already in use.

The properties, each through the real command (`agent.cli.main` in-process; a sample of examples also through a
subprocess of `python -m agent`):
- the command exits 0, or 2 (with FILE:LINE) only for a refused checks annotation; never a traceback;
- the output is strict-valid for the version it was injected for (the schemas of kubernetes-validate, as
  test_corpus.py uses), for each sidecar mode and hook form (1.28, 1.29, 1.30, 1.33);
- injecting twice is injecting once;
- `--remove` gives the input back exactly;
- `inject` adds no `lint` error the input did not have;
- the pod's QoS class is kept (agent.kube.qos, whose rules tests/inject/test_qos.py tables);
- the webhook's JSON Patch (agent/webhook/admission.py), applied with jsonpatch, gives inject's pod for the same pod.

A bounded number of examples by default; RELIABILITY_FUZZ_EXAMPLES asks for more, as for the config and lint fuzzers
(docs/development.md).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import itertools
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes_validate import utils as kube
from referencing import Registry, Resource

from agent.cli import chosen_kubernetes, main
from agent.inject import InjectError, Options
from agent.kube.qos import QosClass, qos_class
from agent.lint import lint_paths
from agent.webhook import admission
from agent.webhook.server import Settings, injection
from tests.webhook import reviews

ROOT = pathlib.Path(__file__).resolve().parents[2]
# One version per sidecar mode and preStop form (a regular container; a native sidecar with /prestop/wait; with the
# sleep action), and the default.
VERSIONS = ((1, 28), (1, 29), (1, 30), (1, 33))
# The test run draws the same 5 workloads of each kind for each property every time (derandomized: about 40 s on two
# loaded cores) and reports a failure without shrinking it (a shrink re-injects hundreds of workloads: minutes).
# RELIABILITY_FUZZ_EXAMPLES, the variable of the config and lint fuzzers, asks for that many random workloads per
# property instead (spread over the kinds), shrunk on failure.
DEEP = "RELIABILITY_FUZZ_EXAMPLES" in os.environ
PER_KIND = max(1, int(os.environ["RELIABILITY_FUZZ_EXAMPLES"]) // 7) if DEEP else 5
SETTINGS = settings(max_examples=PER_KIND, deadline=None, derandomize=not DEEP, database=None,
                    phases=list(Phase) if DEEP else [Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
SUBPROCESS_EVERY = 20  # one example in so many also runs as `python -m agent inject` in a process of its own
AGENT_PORT = 8686
STATUS = "sidecar-agent.io/status"
CHECKS = "sidecar-agent.io/checks"
OPT_OUT = "sidecar-agent.io/inject"


# --- strict schemas, loaded once per version ---------------------------------------------------------------------

@functools.cache
def _validator(version: str, kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    """kubernetes-validate's strict schema of a kind (what kube.validate loads on every call), kept."""
    folder = f"kubernetes-json-schema/v{version}.0-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = kube.schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    definitions = kube.schema_contents(f"{folder}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def strict_errors(document: Mapping[str, Any], version: tuple[int, int]) -> list[str]:
    """Every way the document breaks the strict schema of `version` (empty: valid)."""
    validator = _validator(f"{version[0]}.{version[1]}", str(document["kind"]), str(document["apiVersion"]))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(document)]


# --- the workloads ---------------------------------------------------------------------------------------------------

KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")
JOBS = ("Job", "CronJob")
APP_NAMES = ("web", "api", "worker")
PORT_NUMBERS = (8080, 8081, 8443, 9090, 3000, 50051)
PORT_NAMES = ("http", "https", "metrics", "grpc", "admin", "api")
SECRETS = (("DATABASE_URL", "db", "url"), ("API_TOKEN", "api", "token"))


@dataclass(frozen=True)
class Workload:
    """One drawn case: the manifest, the version it is valid for and injected for, and what the draw knows of it."""

    document: dict[str, Any]
    version: tuple[int, int]
    refused_annotation: bool  # the checks annotation is one inject must refuse (exit 2) when it injects the workload

    @property
    def template(self) -> dict[str, Any]:
        """The pod template ({"metadata", "spec"}) inside the document."""
        node = self.document
        if self.document["kind"] == "CronJob":
            node = node["spec"]["jobTemplate"]
        if self.document["kind"] != "Pod":
            node = node["spec"]["template"]
        return {k: node[k] for k in ("metadata", "spec") if k in node}


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in `one_in` draws: on a value in the middle of the range, since Hypothesis favours both ends of
    it (a rare case on an end would come up in half the examples of a short run)."""
    return draw(st.integers(0, one_in - 1)) == one_in // 2


def timings(draw: st.DrawFn, kind: str) -> dict[str, int]:
    out: dict[str, int] = {}
    if draw(st.booleans()):
        out["initialDelaySeconds"] = draw(st.integers(0, 120))
    if draw(st.booleans()):
        out["periodSeconds"] = draw(st.integers(1, 60))
    if draw(st.booleans()):
        out["timeoutSeconds"] = draw(st.integers(1, 10))
    if draw(st.booleans()):
        out["failureThreshold"] = draw(st.integers(1, 10))
    if draw(st.booleans()):
        out["successThreshold"] = 1 if kind != "readinessProbe" else draw(st.integers(1, 3))
    return out


def port_ref(draw: st.DrawFn, ports: list[dict[str, Any]], numeric: bool = False) -> int | str:
    """A port of the container's own (by name or number), or now and then an undeclared number."""
    if ports and not rarely(draw, 6):
        port = draw(st.sampled_from(ports))
        if "name" in port and not numeric and draw(st.booleans()):
            return str(port["name"])
        return int(port["containerPort"])
    return draw(st.sampled_from(PORT_NUMBERS))


def probe(draw: st.DrawFn, kind: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    handler = draw(st.sampled_from(["httpGet", "httpGet", "tcpSocket", "grpc", "grpc_health_probe", "exec"]))
    body: dict[str, Any]
    if handler == "httpGet":
        get: dict[str, Any] = {"path": draw(st.sampled_from(["/healthz", "/ready", "/", "/status?full=1"])),
                               "port": port_ref(draw, ports)}
        if rarely(draw, 5):
            get["scheme"] = "HTTPS"
        if rarely(draw, 5):
            get["httpHeaders"] = [{"name": "X-Probe", "value": "kubelet"}]
        if rarely(draw, 10):
            get["host"] = "10.0.0.7"
        body = {"httpGet": get}
    elif handler == "tcpSocket":
        body = {"tcpSocket": {"port": port_ref(draw, ports)}}
    elif handler == "grpc":
        grpc: dict[str, Any] = {"port": port_ref(draw, ports, numeric=True)}
        if draw(st.booleans()):
            grpc["service"] = "health"
        body = {"grpc": grpc}
    elif handler == "grpc_health_probe":
        command = ["grpc_health_probe", f"-addr=:{port_ref(draw, ports, numeric=True)}"]
        if draw(st.booleans()):
            command.append("-service=health")
        body = {"exec": {"command": command}}
    else:
        body = {"exec": {"command": draw(st.sampled_from([["cat", "/tmp/healthy"], ["sh", "-c", "test -f /tmp/ok"]]))}}
    return {**body, **timings(draw, kind)}


def pre_stop(draw: st.DrawFn, ports: list[dict[str, Any]], version: tuple[int, int], job: bool) -> dict[str, Any] | None:
    """None, or the user's own hook of each type. In a Job every hook is kept; elsewhere an exec without a shell or an
    httpGet makes inject skip the workload, so they are rarer there (most workloads are to be injected)."""
    kept = ["none", "exec-sleep", "shell", *(["sleep"] if version >= (1, 29) else []), "none"]
    refused = ["no-shell", "httpGet"]
    if job:  # the hook of issue 21 on both ends (see rarely)
        kind = draw(st.sampled_from(["httpGet", *kept, "no-shell", "httpGet"]))
    else:
        kind = draw(st.sampled_from(refused)) if rarely(draw, 8) else draw(st.sampled_from(kept))
    if kind == "none":
        return None
    if kind == "sleep":
        return {"sleep": {"seconds": draw(st.integers(0, 30))}}
    if kind == "exec-sleep":
        return {"exec": {"command": ["sleep", str(draw(st.integers(0, 30)))]}}
    if kind == "shell":
        return {"exec": {"command": [draw(st.sampled_from(["sh", "/bin/sh", "bash"])), "-c",
                                     draw(st.sampled_from(["nginx -s quit", "kill -TERM 1; sleep 2", "sleep 20"]))]}}
    if kind == "no-shell":
        return {"exec": {"command": ["/usr/sbin/nginx", "-s", "quit"]}}
    return {"httpGet": {"path": "/shutdown", "port": port_ref(draw, ports)}}


def resources(draw: st.DrawFn, guaranteed: bool) -> dict[str, Any] | None:
    cpu = draw(st.sampled_from(["100m", "250m", "500m", "1", "2"]))
    memory = draw(st.sampled_from(["64Mi", "128Mi", "256Mi", "1Gi"]))
    if guaranteed:
        limits = {"cpu": cpu, "memory": memory}
        return {"limits": limits} if draw(st.booleans()) else {"requests": dict(limits), "limits": limits}
    shape = draw(st.sampled_from(["none", "requests", "both", "cpu-only"]))
    if shape == "none":
        return None
    if shape == "requests":
        return {"requests": {"cpu": cpu, "memory": memory}}
    if shape == "cpu-only":
        return {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": "4", "memory": "2Gi"}}


def container(draw: st.DrawFn, name: str, pool: list[int], version: tuple[int, int], guaranteed: bool,
              job: bool) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": f"example.com/{name}:1"}
    if draw(st.booleans()):
        c["args"] = draw(st.sampled_from([["serve"], ["--port", "8080"]]))
    ports: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        if not pool:
            break
        number = pool.pop(draw(st.integers(0, len(pool) - 1)))
        port: dict[str, Any] = {"containerPort": number}
        taken = {p.get("name") for p in ports}
        free = [n for n in PORT_NAMES if n not in taken]
        if draw(st.booleans()):
            port = {"name": draw(st.sampled_from(free)), **port}
        ports.append(port)
    if ports:
        c["ports"] = ports
    env: list[dict[str, Any]] = []
    if draw(st.booleans()):
        env.append({"name": "LOG_LEVEL", "value": "info"})
    for var, secret, key in SECRETS:
        if draw(st.booleans()):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    if env:
        c["env"] = env
    for key in ("livenessProbe", "readinessProbe", "startupProbe"):
        if draw(st.booleans()):
            c[key] = probe(draw, key, ports)
    hook = pre_stop(draw, ports, version, job)
    if hook is not None:
        c["lifecycle"] = {"preStop": hook}
    limits = resources(draw, guaranteed)
    if limits is not None:
        c["resources"] = limits
    return c


def init_containers(draw: st.DrawFn, version: tuple[int, int], guaranteed: bool) -> list[dict[str, Any]]:
    """A plain init container, and native sidecars already there (from 1.28, where the schema has restartPolicy)."""
    out: list[dict[str, Any]] = []
    if draw(st.booleans()):
        out.append({"name": "migrate", "image": "example.com/api:1", "command": ["sh", "-c", "./migrate up"]})
    if version >= (1, 28) and draw(st.booleans()):
        out.append({"name": "mesh-proxy", "image": "example.com/proxy:1", "restartPolicy": "Always",
                    "ports": [{"name": "proxy-admin", "containerPort": 15021}],
                    "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 2}})
    if version >= (1, 28) and draw(st.booleans()):
        out.append({"name": "log-shipper", "image": "example.com/fluent-bit:1", "restartPolicy": "Always",
                    "args": ["-c", "/etc/fluent-bit/fluent-bit.conf"]})
    for c in out:
        limits = resources(draw, guaranteed)
        if limits is not None:
            c["resources"] = limits
    return out


def checks_annotation(draw: st.DrawFn, containers: list[dict[str, Any]], accepted: bool) -> tuple[str, bool] | None:
    """A checks annotation, and whether inject must refuse it: a literal password, an unknown type, a ${VAR} that
    names no env entry."""
    variables = {e["name"] for c in containers for e in c.get("env", [])}
    valid = ["cache: {type: tcp, address: '127.0.0.1:6379', probes: [readiness]}",
             "marker: {type: file, path: /tmp/ready, max_age: 1h, probes: [startup]}"]
    if "DATABASE_URL" in variables:
        valid.append("db:\n  type: postgres\n  dsn: ${DATABASE_URL}\n  probes: [readiness]\n")
    if "API_TOKEN" in variables:
        valid.append("upstream:\n  type: http\n  url: http://127.0.0.1:9999/ping\n  headers: {Authorization: 'Bearer ${API_TOKEN}'}\n")
    refused = ["db: {type: postgres, dsn: 'postgres://app:hunter2@db:5432/app'}", "broken: {type: nosuch}",
               "ghost:\n  type: postgres\n  dsn: ${NOT_IN_ENV}\n"]
    choice = draw(st.sampled_from(["none", "none", "valid", "valid"] + ([] if accepted else ["refused"])))
    if choice == "none":
        return None
    if choice == "valid":
        return "\n".join(draw(st.lists(st.sampled_from(valid), min_size=1, max_size=2, unique=True))) + "\n", False
    return draw(st.sampled_from(refused)) + "\n", True


@st.composite
def workloads(draw: st.DrawFn, kind: str, accepted: bool = False) -> Workload:
    """A workload of `kind`; with `accepted`, none whose checks annotation inject must refuse (the properties of the
    output are about the workloads inject takes; the refused ones exit 2: test_exits_0_or_2_never_a_traceback)."""
    # Each kind counts from a version of its own: a short run's draws cluster on their first values, and this way the
    # kinds of one property still meet every version.
    version = VERSIONS[(KINDS.index(kind) + draw(st.integers(0, len(VERSIONS) - 1))) % len(VERSIONS)]
    guaranteed = draw(st.booleans())
    pool = list(PORT_NUMBERS)
    names = APP_NAMES[:draw(st.sampled_from([2, 1, 3, 2]))]  # two most often, and not on an end (see rarely)
    containers = [container(draw, name, pool, version, guaranteed, kind in JOBS) for name in names]
    if rarely(draw, 10):  # the agent's port already in use
        draw(st.sampled_from(containers)).setdefault("ports", []).append({"name": "http-alt", "containerPort": AGENT_PORT})
    spec: dict[str, Any] = {"containers": containers}
    inits = init_containers(draw, version, guaranteed)
    if inits:
        spec["initContainers"] = inits
    if draw(st.booleans()):
        spec["terminationGracePeriodSeconds"] = draw(st.integers(0, 600))
    if rarely(draw, 10):
        spec["hostNetwork"] = True
    if kind in JOBS:
        spec["restartPolicy"] = draw(st.sampled_from(["Never", "OnFailure"]))
    labels = {"app": names[0]}
    annotations: dict[str, str] = {}
    opt_out = draw(st.sampled_from(["label", "annotation", "true"])) if rarely(draw, 8) else "none"
    if opt_out == "label":
        labels[OPT_OUT] = "false"
    elif opt_out == "annotation":
        annotations[OPT_OUT] = "false"
    elif opt_out == "true":
        annotations[OPT_OUT] = "true"  # anything but "false" is no opt-out
    refused = False
    drawn = checks_annotation(draw, containers, accepted)
    if drawn is not None:
        annotations[CHECKS], refused = drawn
    metadata: dict[str, Any] = {"labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    name = f"{names[0]}-{kind.lower()}"
    if kind == "Pod":
        document: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **metadata}, "spec": spec}
        return Workload(document, version, refused)
    template = {"metadata": metadata, "spec": spec}
    body: dict[str, Any]
    if kind in JOBS:
        body = {"backoffLimit": 2, "template": template}
        if kind == "CronJob":
            body = {"schedule": "0 3 * * *", "jobTemplate": {"spec": body}}
        document = {"apiVersion": "batch/v1", "kind": kind, "metadata": {"name": name}, "spec": body}
        return Workload(document, version, refused)
    body = {"selector": {"matchLabels": {"app": names[0]}}, "template": template}
    if kind in ("Deployment", "ReplicaSet", "StatefulSet"):
        body = {"replicas": 3, **body}
    if kind == "StatefulSet":
        body["serviceName"] = names[0]
    return Workload({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": body}, version, refused)


# --- running the command ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


_counter = itertools.count()


def cli(path: pathlib.Path, version: tuple[int, int], *extra: str) -> Run:
    """`sidecar-agent inject` through its real entry point, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["inject", "--kubernetes-version", f"{version[0]}.{version[1]}", *extra, str(path)], env={})
    return Run(code, out.getvalue(), err.getvalue())


def in_subprocess(path: pathlib.Path, version: tuple[int, int]) -> Run:
    done = subprocess.run([sys.executable, "-m", "agent", "inject", "--kubernetes-version", f"{version[0]}.{version[1]}",
                           str(path)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "SIDECAR_AGENT_DEBUG": ""})
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def workdir() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory() as name:
        yield pathlib.Path(name)


def write(workdir: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = workdir / name
    path.write_text(text)
    return path


def dump(document: Any) -> str:
    return yaml.safe_dump(document, sort_keys=False)


def injected(workdir: pathlib.Path, w: Workload) -> tuple[pathlib.Path, Run]:
    """The workload's file and the command's run on it, which succeeded."""
    path = write(workdir, "input.yaml", dump(w.document))
    run = cli(path, w.version)
    assert run.code == 0, run.err
    return path, run


def for_every_kind(test: Callable[..., None]) -> Callable[..., None]:
    """A property run for every kind (so that the bounded run has them all), with SETTINGS; the test draws its
    workloads of `kind` from `data`."""
    return pytest.mark.parametrize("kind", KINDS)(SETTINGS(given(st.data())(test)))


# --- the properties --------------------------------------------------------------------------------------------------

@for_every_kind
def test_the_generated_workloads_are_valid_for_their_version(kind: str, data: st.DataObject) -> None:
    """The generator's own check: every drawn input passes its version's schema, so that a schema error in the output
    is inject's."""
    w = data.draw(workloads(kind), label="workload")
    assert strict_errors(w.document, w.version) == []


@for_every_kind
def test_exits_0_or_2_never_a_traceback(workdir: pathlib.Path, kind: str, data: st.DataObject) -> None:
    w = data.draw(workloads(kind), label="workload")
    path = write(workdir, "input.yaml", dump(w.document))
    run = cli(path, w.version)
    assert "Traceback" not in run.err and "internal error" not in run.err, run.err
    if run.code == 2:
        assert w.refused_annotation, run.err
        assert run.out == "" and re.match(rf"sidecar-agent inject: {re.escape(str(path))}:\d+: ", run.err), run.err
    else:
        assert run.code == 0, run.err
    if next(_counter) % SUBPROCESS_EVERY == 0:  # the installed entry point, as a user runs it
        alone = in_subprocess(path, w.version)
        assert (alone.code, alone.out, alone.err) == (run.code, run.out, run.err)


@for_every_kind
def test_output_is_strict_valid_for_its_version(workdir: pathlib.Path, kind: str, data: st.DataObject) -> None:
    w = data.draw(workloads(kind, accepted=True), label="workload")
    _, run = injected(workdir, w)
    for document in yaml.safe_load_all(run.out):
        assert strict_errors(document, w.version) == [], f"injected for {w.version}"


@for_every_kind
def test_injecting_twice_is_injecting_once(workdir: pathlib.Path, kind: str, data: st.DataObject) -> None:
    w = data.draw(workloads(kind, accepted=True), label="workload")
    _, once = injected(workdir, w)
    twice = cli(write(workdir, "once.yaml", once.out), w.version)
    assert (twice.code, twice.out) == (0, once.out)


@for_every_kind
def test_remove_gives_the_input_back_exactly(workdir: pathlib.Path, kind: str, data: st.DataObject) -> None:
    w = data.draw(workloads(kind, accepted=True), label="workload")
    path, run = injected(workdir, w)
    removed = cli(write(workdir, "injected.yaml", run.out), w.version, "--remove")
    untouched = cli(path, w.version, "--remove")  # the input as the command writes YAML, nothing injected
    assert removed.code == 0 and removed.out == untouched.out
    assert yaml.safe_load(removed.out) == w.document


def errors(path: pathlib.Path) -> set[tuple[str, str, str | None]]:
    return {(f.rule, f.object, f.container) for f in lint_paths([str(path)]).findings if f.severity == "error"}


@for_every_kind
def test_inject_adds_no_lint_error(workdir: pathlib.Path, kind: str, data: st.DataObject) -> None:
    w = data.draw(workloads(kind, accepted=True), label="workload")
    path, run = injected(workdir, w)
    added = errors(write(workdir, "injected.yaml", run.out)) - errors(path)
    assert added == set(), run.out


@for_every_kind
def test_the_qos_class_is_kept(workdir: pathlib.Path, kind: str, data: st.DataObject) -> None:
    """Guaranteed stays Guaranteed and Burstable Burstable; a BestEffort pod becomes Burstable, since the agent's
    container has requests and limits (docs/inject.md)."""
    w = data.draw(workloads(kind, accepted=True), label="workload")
    _, run = injected(workdir, w)
    before = qos_class(w.template["spec"])
    after = qos_class(Workload(yaml.safe_load(run.out), w.version, False).template["spec"])
    if STATUS not in run.out:  # skipped: unchanged
        assert after == before
    else:
        assert after is (QosClass.BURSTABLE if before is QosClass.BEST_EFFORT else before)


@for_every_kind
def test_the_webhooks_patch_gives_injects_pod(workdir: pathlib.Path, kind: str, data: st.DataObject) -> None:
    """The same pod (the workload's template as a Pod) through the webhook and through `inject`."""
    w = data.draw(workloads(kind), label="workload")
    pod = {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(w.template)}
    pod["metadata"] = {"name": "p", **pod.get("metadata", {})}
    chosen = chosen_kubernetes(f"{w.version[0]}.{w.version[1]}")  # as `sidecar-agent webhook --kubernetes-version X.Y`
    options = Options(kubernetes_version=chosen.version, kubernetes_source=chosen.source)
    mutate, refusals = injection(Settings(cert="unused.pem", key="unused.key", options=options))
    assert refusals == (InjectError,)
    decision = admission.decide(admission.parse(json.dumps(reviews.review(pod)).encode()), mutate, refusals)
    run = cli(write(workdir, "pod.yaml", dump(pod)), w.version)
    if decision.result == "refused":
        assert run.code == 2 and w.refused_annotation, (decision.message, run.err)
        return
    assert run.code == 0, run.err
    response = decision.body["response"]
    after = reviews.patched(pod, response) if "patch" in response else pod
    assert after == yaml.safe_load(run.out)
