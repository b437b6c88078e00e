"""`sidecar-agent inject` as a command: stdin, directories, exit codes, file and line on bad input."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import yaml

HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE / "corpus"


def inject(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "inject", *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


def test_stdin_gives_what_the_file_gives() -> None:
    path = CORPUS / "frontend.yaml"
    from_file, from_stdin = inject(str(path)), inject("-", stdin=path.read_text())
    assert from_file.returncode == from_stdin.returncode == 0
    assert from_stdin.stdout == from_file.stdout and "sidecar-agent" in from_file.stdout


def test_a_directory_is_its_yaml_files_in_order() -> None:
    files = sorted(CORPUS.glob("*.yaml"))
    whole, parts = inject(str(CORPUS)), inject(*map(str, files))
    assert whole.returncode == 0 and whole.stdout == parts.stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(whole.stdout)]
    assert kinds[:3] == ["Deployment", "Deployment", "Service"]  # checks-annotation, frontend, then grpc-service


def test_skipped_workloads_are_named_on_stderr_with_exit_0() -> None:
    done = inject(str(CORPUS / "skipped.yaml"))
    assert done.returncode == 0
    assert "skipped.yaml:17: DaemonSet/node-exporter: not injected: hostNetwork" in done.stderr
    assert list(yaml.safe_load_all(done.stdout)) == list(yaml.safe_load_all((CORPUS / "skipped.yaml").read_text()))


def test_a_bad_checks_annotation_exits_2_with_file_line_and_key_path(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((CORPUS / "checks-annotation.yaml").read_text().replace("interval: 5s", "interval: often"))
    done = inject(str(bad))
    assert done.returncode == 2 and done.stdout == ""
    assert f"{bad}:13: Deployment/orders: " in done.stderr
    assert 'metadata.annotations["sidecar-agent.io/checks"].checks.db.interval: ' in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("text", "where"), [("kind: Deployment\nmetadata: {name: [\n", ":3:"), ("a: 1\na: 2\n", ":2:")])
def test_unreadable_yaml_exits_2_with_the_line(tmp_path: pathlib.Path, text: str, where: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    done = inject(str(bad))
    assert done.returncode == 2 and where in done.stderr and "Traceback" not in done.stderr


def test_a_bad_version_is_a_usage_error() -> None:
    done = inject("--kubernetes-version", "latest", str(CORPUS / "frontend.yaml"))
    assert done.returncode == 2 and "--kubernetes-version" in done.stderr


def status(text: str) -> dict[str, object]:
    pod = next(d for d in yaml.safe_load_all(text) if d["kind"] == "Deployment")["spec"]["template"]
    found: dict[str, object] = json.loads(pod["metadata"]["annotations"]["sidecar-agent.io/status"])
    return found


def test_the_status_says_whether_the_version_was_given_or_the_default() -> None:
    path = str(CORPUS / "frontend.yaml")
    assert {k: status(inject(path).stdout)[k] for k in ("kubernetes", "kubernetes_from")} == {
        "kubernetes": "1.33", "kubernetes_from": "default"}
    assert {k: status(inject("--kubernetes-version", "1.29", path).stdout)[k] for k in ("kubernetes", "kubernetes_from")
            } == {"kubernetes": "1.29", "kubernetes_from": "flag"}


def test_auto_is_the_webhooks_only() -> None:
    done = inject("--kubernetes-version", "auto", str(CORPUS / "frontend.yaml"))
    assert done.returncode == 2 and "--kubernetes-version auto" in done.stderr and done.stdout == ""


def test_remove_on_the_command_line_restores_the_input(tmp_path: pathlib.Path) -> None:
    injected = tmp_path / "injected.yaml"
    injected.write_text(inject("--kubernetes-version", "1.28", "--image", "registry.example/agent:9",
                               str(CORPUS / "statefulset.yaml")).stdout)
    assert "image: registry.example/agent:9" in injected.read_text()
    back = inject("--remove", str(injected))
    assert back.returncode == 0
    assert list(yaml.safe_load_all(back.stdout)) == list(yaml.safe_load_all((CORPUS / "statefulset.yaml").read_text()))
