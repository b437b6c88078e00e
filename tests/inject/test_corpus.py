"""The injection corpus, in both sidecar modes: golden output, strict Kubernetes schemas, lint-clean, idempotent, and
`--remove` gives the input back byte for byte."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from kubernetes_validate import utils as kube

from agent.inject import Options
from agent.inject.documents import run
from agent.kube.versions import Source
from agent.lint import lint_documents
from agent.lint.source import parse_text as parse

HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
GOLDEN = HERE / "golden"
FILES = sorted(CORPUS.glob("*.yaml"))
VERSIONS = {"1.28": (1, 28), "1.33": (1, 33)}  # a regular container below 1.29, a native sidecar from it
CASES = [(f, v) for f in FILES for v in VERSIONS]
IDS = [f"{f.stem}-{v}" for f, v in CASES]


def inject(path: pathlib.Path | str, version: str, **kw: bool) -> str:
    return run([str(path)], Options(kubernetes_version=VERSIONS[version], kubernetes_source=Source.FLAG), **kw).text


def test_corpus_has_every_shape() -> None:
    docs = [d.body for f in FILES for d in parse(f.read_bytes(), str(f))]
    kinds = {d["kind"] for d in docs} | {i["kind"] for d in docs for i in d.get("items", [])}
    assert {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "List", "Service", "ConfigMap"} <= kinds


@pytest.mark.parametrize(("path", "version"), CASES, ids=IDS)
def test_output_matches_golden(path: pathlib.Path, version: str) -> None:
    out = inject(path, version)
    golden = GOLDEN / f"{path.stem}-{version}.yaml"  # written only by tools/update_goldens.py, never by a test run
    assert out == golden.read_text()


@pytest.mark.parametrize(("path", "version"), CASES, ids=IDS)
def test_output_validates_strictly(path: pathlib.Path, version: str) -> None:
    for doc in yaml.safe_load_all(inject(path, version)):
        for obj in doc["items"] if doc["kind"] == "List" else [doc]:
            kube.validate(obj, f"{version}.0", strict=True)


@pytest.mark.parametrize(("path", "version"), CASES, ids=IDS)
def test_output_lints_without_error(path: pathlib.Path, version: str) -> None:
    out = inject(path, version)
    result = lint_documents(parse(out.encode(), f"{path.name} injected for {version}"))
    errors = [f"{f.rule} {f.object} {f.container}: {f.message}" for f in result.findings if f.severity == "error"]
    assert errors == []


@pytest.mark.parametrize(("path", "version"), CASES, ids=IDS)
def test_injecting_twice_is_injecting_once(path: pathlib.Path, version: str, tmp_path: pathlib.Path) -> None:
    once = tmp_path / "once.yaml"
    once.write_text(inject(path, version))
    assert inject(once, version) == once.read_text()


@pytest.mark.parametrize(("path", "version"), CASES, ids=IDS)
def test_remove_gives_the_input_back(path: pathlib.Path, version: str, tmp_path: pathlib.Path) -> None:
    injected = tmp_path / "injected.yaml"
    injected.write_text(inject(path, version))
    untouched = inject(path, version, undo=True)  # the input as the command writes YAML, nothing injected
    assert inject(injected, version, undo=True) == untouched
    assert list(yaml.safe_load_all(untouched)) == list(yaml.safe_load_all(path.read_text()))
