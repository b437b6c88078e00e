"""`sidecar-agent lint` as a command: exit codes, unreadable input, and golden text and JSON outputs."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from agent.cli import main

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GOLDEN = HERE / "golden"
COMBINED = "tests/lint/corpus/combined"


@pytest.fixture(autouse=True)
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # paths in the output are as given: relative to the repository


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["lint", *args], env={})
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("fmt", "name"), [("text", "combined.txt"), ("json", "combined.json")])
def test_golden_output(capsys: pytest.CaptureFixture[str], fmt: str, name: str) -> None:
    code, out, err = run(capsys, "--format", fmt, COMBINED)
    assert (code, err) == (1, "")
    assert out == (GOLDEN / name).read_text()  # written only by tools/update_goldens.py, never by a test run


def test_json_output_is_the_findings_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "--format", "json", COMBINED)
    body = json.loads(out)
    assert set(body) == {"findings", "skipped", "summary"}
    assert body["summary"]["errors"] == sum(f["severity"] == "error" for f in body["findings"]) > 0
    assert set(body["findings"][0]) == {"rule", "severity", "file", "line", "object", "namespace", "container", "message", "fix"}


@pytest.mark.parametrize(("path", "code"), [
    ("tests/lint/corpus/good", 0),
    ("tests/lint/corpus/bad/prestop-missing.yaml", 1),
    ("tests/lint/corpus/bad/startup-probe-missing.yaml", 0),   # a warning only
    ("tests/lint/corpus/bad/agent-config-not-found.yaml", 0),  # a note only
])
def test_exit_code_is_1_only_for_errors(capsys: pytest.CaptureFixture[str], path: str, code: int) -> None:
    assert run(capsys, path)[0] == code


def test_text_output_names_file_line_rule_object_and_fix(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tests/lint/corpus/bad/prestop-missing.yaml")
    assert code == 1
    first, fix, summary = out.splitlines()
    assert first.startswith("tests/lint/corpus/bad/prestop-missing.yaml:12: error [prestop-missing] Deployment/shop container shop: ")
    assert fix.startswith("    fix: ") and summary == "1 error in 1 workload (1 file)"


@pytest.mark.parametrize(("name", "where", "says"), [
    ("not-yaml.yaml", ":5:", "not valid YAML"),
    ("not-kubernetes.yaml", ":2:", "not a Kubernetes object"),
    ("second-document-is-a-list.yaml", ":7:", "got a list"),
    ("wrong-field-type.yaml", ":12:", "livenessProbe.periodSeconds: expected an integer, got '10'"),
    ("duplicate-key.yaml", ":6:", "duplicate key 'containers'"),
    ("bad-timestamp.yaml", ":7:", "cannot read this timestamp: month must be in 1..12 (quote it to keep it a string)"),
    ("no-containers.yaml", ":5:", "spec.containers is missing or empty"),
])
def test_unreadable_input_exits_2_naming_file_and_line(capsys: pytest.CaptureFixture[str], name: str, where: str,
                                                        says: str) -> None:
    path = f"tests/lint/unreadable/{name}"
    code, out, err = run(capsys, path)
    assert (code, out) == (2, "")
    assert err.startswith(f"sidecar-agent lint: {path}{where} ") and says in err and "Traceback" not in err


def test_unreadable_files_of_every_kind(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    binary = tmp_path / "image.yaml"
    binary.write_bytes(b"apiVersion: v1\nkind: Pod\n\xff\xfe\x00")
    empty = tmp_path / "empty.yaml"
    empty.write_text("---\n# nothing\n")
    for args, says in (([str(binary)], ":3: not UTF-8"), ([str(empty)], "no Kubernetes objects"),
                       ([str(tmp_path / "missing.yaml")], "cannot read: No such file"),
                       (["--agent-config", str(tmp_path / "nope.yaml"), COMBINED], "nope.yaml: cannot read"),
                       ([str(tmp_path / "sub")], "cannot read")):
        code, out, err = run(capsys, *args)
        assert (code, out) == (2, ""), args
        assert says in err and "Traceback" not in err, err


def test_no_traceback_from_the_real_command(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [\n")
    proc = subprocess.run([sys.executable, "-m", "agent", "lint", str(bad)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"sidecar-agent lint: {bad}:") and "Traceback" not in proc.stderr


def test_a_directory_skips_yaml_files_without_kubernetes_objects(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: pathlib.Path) -> None:
    (tmp_path / "values.yaml").write_text("replicaCount: 2\n")
    (tmp_path / "rules.yml").write_text("groups: []\n")
    (tmp_path / "README.md").write_text("not YAML: [\n")
    (tmp_path / "pod.yaml").write_text((HERE / "corpus/bad/prestop-missing.yaml").read_text())
    code, out, _ = run(capsys, str(tmp_path))
    assert code == 1
    assert f"{tmp_path / 'rules.yml'}: skipped: no Kubernetes objects" in out
    assert f"{tmp_path / 'values.yaml'}: skipped: no Kubernetes objects" in out


def test_a_directory_still_refuses_broken_yaml(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    (tmp_path / "broken.yaml").write_text("a: [\n")
    assert run(capsys, str(tmp_path))[0] == 2


def test_agent_config_option(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("shutdown: {drain_delay: 1s}\n")
    path = "tests/lint/corpus/bad/agent-config-not-found.yaml"
    code, out, _ = run(capsys, "--agent-config", str(config), path)
    assert code == 0 and out.endswith("no problems in 1 workload (1 file)\n")
    config.write_text("shutdown: {drain_delay: 1s, stop_timeout: 40s}\n")
    code, out, _ = run(capsys, "--agent-config", str(config), path)
    assert code == 1 and f"[agent-config-invalid] Pod/elsewhere container agent: the agent's config ({config})" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["lint"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["lint", "--format", "xml", COMBINED])
    assert exc.value.code == 2
