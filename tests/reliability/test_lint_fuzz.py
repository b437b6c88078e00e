"""Property tests of lint's input: any file is linted, or refused with an InputError that names its line.

`sidecar-agent lint FILE` reads YAML it did not write: hand-edited manifests, Helm output, files that are not YAML
at all. Whatever the bytes, `agent.lint.lint_paths` must return a result or raise `agent.lint.InputError`, never
anything else, and the command must then exit 0 or 1 with findings, or 2 with `FILE:LINE: message`, never 1 with
"internal error".

Four families of input, as for the config loader (tests/reliability/test_config_fuzz.py):
- Kubernetes-like trees (workloads with containers, probes, hooks and env, and ConfigMaps holding an agent config),
  with random values in their fields, one or several documents per file;
- raw text (a YAML-ish alphabet and any unicode) and raw bytes;
- mutations of the lint corpus (tests/lint/corpus): values of another type, dropped keys, odd scalars (dates that
  are no dates, ints of 5000 digits, tags);
- edits of the corpus files' text: characters inserted, deleted or replaced.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import pathlib
import re
import tempfile
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.lint import InputError, lint_paths

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = sorted((ROOT / "tests" / "lint" / "corpus").rglob("*.yaml"))
CORPUS_TEXTS = [path.read_text() for path in CORPUS]
CORPUS_TREES = [doc for text in CORPUS_TEXTS for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]

# An InputError about the file as a whole, which has no line to name.
WHOLE_FILE = ("holds no Kubernetes objects (the file is empty)",)
EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "250"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def workdir() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory() as name:
        yield pathlib.Path(name)


def lints_or_refuses(workdir: pathlib.Path, data: str | bytes) -> None:
    """The property: a result, or an InputError with a line; and the command agrees (0 or 1, or 2 with the line)."""
    path = workdir / "manifest.yaml"
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    refused: InputError | None = None
    try:
        lint_paths([str(path)])
    except InputError as exc:
        refused = exc
        assert exc.line is not None or exc.message in WHOLE_FILE, f"no line: {exc}"
    except Exception as exc:  # noqa: BLE001 - the property is that nothing else escapes
        raise AssertionError(f"lint raised {type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}") from None
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["lint", str(path)], env={})
    if refused is None:
        assert code in (0, 1) and err.getvalue() == "", (code, err.getvalue())
        return
    assert (code, out.getvalue()) == (2, ""), (code, err.getvalue())
    located = re.match(rf"sidecar-agent lint: {re.escape(str(path))}:\d+: ", err.getvalue())
    assert located or refused.message in WHOLE_FILE, err.getvalue()


# --- strategies -----------------------------------------------------------------------------------------

ODD_SCALARS = ["2001-13-45", "2001-02-30 25:61:00", "0000-01-01", "2001-01-01 00:00:00 +99:00", "9" * 5000, "-" + "9" * 5000,
               "0x" + "f" * 5000, "1e999", ".nan", "!!binary x", "!!float x", "!!int x", "!!timestamp x", "!!set {a: 1}",
               "!!omap [a: 1]", "!!python/object:os.system x", "*undefined", "&a x", "<<: 1", "~", "null", "yes", "0o8",
               "1_000", "'unterminated", '"\\x"', "\t", "${A}"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                    st.sampled_from(["8686", "http", "/livez", "/readyz", "/prestop", "agent", "app", "TCP", "exec", "run",
                                     "--config", "/etc/sidecar-agent/agent.yaml", "sidecar-agent", "ghcr.io/acme/sidecar-agent:1"]))
FIELD_KEYS = ["name", "image", "command", "args", "env", "ports", "containerPort", "livenessProbe", "readinessProbe",
              "startupProbe", "httpGet", "tcpSocket", "grpc", "exec", "path", "port", "host", "periodSeconds",
              "failureThreshold", "successThreshold", "timeoutSeconds", "initialDelaySeconds", "lifecycle", "preStop",
              "httpHeaders", "value", "valueFrom", "volumeMounts", "mountPath", "volumes", "configMap", "items",
              "key", "restartPolicy", "securityContext", "runAsUser", "capabilities", "add", "initContainers",
              "shareProcessNamespace", "terminationGracePeriodSeconds", "data", "agent.yaml"]
keys = st.one_of(st.sampled_from(FIELD_KEYS), st.text(min_size=1, max_size=10))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
                     max_leaves=20)


@st.composite
def containers(draw: st.DrawFn) -> dict[str, Any]:
    container: dict[str, Any] = {"name": draw(st.sampled_from(["app", "agent", "x"])), "image": draw(scalars)}
    for key in draw(st.lists(st.sampled_from(FIELD_KEYS), max_size=5, unique=True)):
        container[key] = draw(trees)
    return container


@st.composite
def objects(draw: st.DrawFn) -> dict[str, Any]:
    """A workload (its pod spec with random containers and fields), a ConfigMap, or any mapping."""
    kind = draw(st.sampled_from(["Pod", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ConfigMap", "Other"]))
    if kind == "ConfigMap":
        text = draw(st.one_of(st.text(max_size=80), trees.map(lambda t: yaml.safe_dump(t))))
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": draw(scalars)}, "data": {"agent.yaml": text}}
    if kind == "Other":
        return draw(st.dictionaries(keys, trees, max_size=4))
    spec: dict[str, Any] = {"containers": draw(st.lists(containers(), max_size=3))}
    for key in draw(st.lists(st.sampled_from(FIELD_KEYS), max_size=3, unique=True)):
        spec[key] = draw(trees)
    body: dict[str, Any] = spec if kind == "Pod" else {"template": {"spec": spec}}
    if kind == "CronJob":
        body = {"jobTemplate": {"spec": body}}
    api = "v1" if kind == "Pod" else "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    return {"apiVersion": api, "kind": kind, "metadata": {"name": draw(scalars)}, "spec": body}


def dump(tree: Any) -> str:
    return yaml.safe_dump(tree, allow_unicode=True, default_flow_style=None, sort_keys=False)


YAMLISH = st.lists(st.sampled_from([*"abkind:{}[]-,&*!|>'\"#%@`?\n \t$0123456789.~\\", "<<", "---", ": ", "\n  ", "apiVersion: v1\n",
                                    "kind: Pod\n", "2001-13-45", "!!int ", "!!binary "]),
                   max_size=60).map("".join)


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.append((*prefix, key))
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            out.append((*prefix, index))
            out.extend(_paths(value, (*prefix, index)))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A corpus document with 1 to 4 of its values replaced (or dropped), dumped; odd scalars spliced into the text."""
    tree = copy.deepcopy(draw(st.sampled_from(CORPUS_TREES)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(tree) if p[0] not in ("apiVersion", "kind")]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = tree
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(trees)
    text = dump(tree)
    for _ in range(draw(st.integers(0, 2))):
        lines = text.split("\n")
        index = draw(st.integers(0, len(lines) - 1))
        if ": " in lines[index]:  # a value replaced by an odd scalar, as a person might write it
            lines[index] = lines[index].split(": ", 1)[0] + ": " + draw(st.sampled_from(ODD_SCALARS))
        text = "\n".join(lines)
    return text


# --- properties -----------------------------------------------------------------------------------------

@SETTINGS
@given(st.lists(objects(), min_size=1, max_size=3))
def test_any_kubernetes_like_file_is_linted_or_refused_with_a_line(workdir: pathlib.Path, docs: list[Any]) -> None:
    lints_or_refuses(workdir, "---\n".join(dump(doc) for doc in docs))


@SETTINGS
@given(st.one_of(YAMLISH, st.text(max_size=200)))
def test_any_text_is_linted_or_refused_with_a_line(workdir: pathlib.Path, text: str) -> None:
    lints_or_refuses(workdir, text)


@SETTINGS
@given(st.one_of(st.binary(max_size=200), YAMLISH.map(lambda t: t.encode("utf-8"))))
def test_any_bytes_are_linted_or_refused_with_a_line(workdir: pathlib.Path, data: bytes) -> None:
    lints_or_refuses(workdir, data)


@SETTINGS
@given(mutated())
def test_any_mutation_of_a_corpus_manifest_is_linted_or_refused(workdir: pathlib.Path, text: str) -> None:
    lints_or_refuses(workdir, text)


@SETTINGS
@given(st.data())
def test_any_text_edit_of_a_corpus_file_is_linted_or_refused(workdir: pathlib.Path, data: st.DataObject) -> None:
    text = data.draw(st.sampled_from(CORPUS_TEXTS))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        insert = data.draw(st.one_of(st.just(""), YAMLISH.filter(lambda t: len(t) < 10),
                                     st.sampled_from(["2001-13-45", "9" * 5000, "&a", "*a", "\t", "\x01", "[" * 2000])))
        text = text[:pos] + insert + text[pos + cut:]
    lints_or_refuses(workdir, text)


# --- inputs the properties are about, pinned ------------------------------------------------------------

@pytest.mark.parametrize(("text", "line"), [
    ("apiVersion: v1\nkind: Pod\nmetadata:\n  created: 2001-13-45\n", 4),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {replicas: " + "9" * 5000 + "}\n", 4),
    ("apiVersion: v1\nkind: Pod\nmetadata: 0x" + "f" * 5000 + "\n", 3),  # found by the fuzz: an int too long to print
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: 'p\x01'}\n", 3),
    ("apiVersion: v1\nkind: Pod\nspec: " + "[" * 3000 + "\n", 3),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: !!binary x}\n", 3),
    ("apiVersion: v1\nkind: Pod\nmetadata: {[a]: p}\n", 3),
])
def test_unreadable_yaml_exits_2_with_its_line(workdir: pathlib.Path, text: str, line: int) -> None:
    path = workdir / "pinned.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        lint_paths([str(path)])
    assert info.value.line == line, info.value
    lints_or_refuses(workdir, text)
