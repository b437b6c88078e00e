"""The docs stay true to the code: generated tables current, every key, type and page present, links and examples working."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys
from types import ModuleType, SimpleNamespace

import pytest
import yaml

from agent import checks
from agent.checks import CheckType
from agent.config import COMMON, DEFAULT_CONFIG, TOP, load
from agent.fields import Bool, Duration, Field, Problems, Str, parse_mapping
from agent.lint import lint_paths
from agent.lint.findings import ERROR, RULES, Rule
from agent.runtime.metrics import METRICS, MetricDef

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
CONFIGURATION = (DOCS / "configuration.md").read_text()
PAGES = ("configuration", "probes", "shutdown", "deploy", "metrics", "lint", "plugins", "development")


def load_gendocs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gendocs", ROOT / "tools" / "gendocs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gendocs = load_gendocs()


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def test_every_config_key_is_documented() -> None:
    names = {f.name for f in (*TOP, *COMMON)}
    for type_name in checks.type_names():
        assert f"| `{type_name}` |" in CONFIGURATION, type_name
        names |= {f.name for f in checks.load_type(type_name).fields}
    missing = sorted(n for n in names if not any(f in CONFIGURATION for f in (f"`{n}`", f".{n}`", f"`{n}.")))
    assert missing == []


def test_every_config_key_has_a_description() -> None:
    def undocumented(fields: tuple[Field, ...] | list[Field], prefix: str = "") -> list[str]:
        out = []
        for f in fields:
            sub = getattr(f.kind, "fields", None)
            if sub is not None and f.default is not None:  # a section with a default is only a heading
                out += undocumented(sub, prefix + f.name + ".")
                continue
            if not f.doc:
                out.append(prefix + f.name)
            if sub is not None:
                out += undocumented(sub, prefix + f.name + ".")
        return out

    every = [*TOP, *COMMON, *(f for t in checks.type_names() for f in checks.load_type(t).fields)]
    assert undocumented(every) == []


def test_the_configuration_page_shows_the_embedded_default_and_examples_that_load() -> None:
    blocks = fenced(CONFIGURATION, "yaml")
    assert blocks[0] == DEFAULT_CONFIG
    assert [len(load(block, {}).checks) for block in blocks] == [0, 4]


def test_the_committed_pages_match_the_generator() -> None:
    assert gendocs.stale_pages(ROOT) == [], "run: python tools/gendocs.py"


def test_a_field_metric_or_rule_added_without_regenerating_makes_its_page_stale() -> None:
    types = {name: tuple(checks.load_type(name).fields) for name in gendocs.builtin_types()}
    http_plus = {**types, "http": (*types["http"], Field("follow_redirects", Bool(), False, "follow 3xx answers"))}
    metric = MetricDef("sidecar_check_skipped_total", "counter", "Runs skipped.", ("check",))
    rule = Rule("probe-too-slow", ERROR, "a probe whose timeout is shorter than the check it asks")
    assert gendocs.stale_pages(ROOT, gendocs.blocks(top=(*TOP, Field("pidfile", Str(), None, "where to write the pid")))) \
        == ["docs/configuration.md"]
    assert gendocs.stale_pages(ROOT, gendocs.blocks(common=(*COMMON, Field("jitter", Duration(), 0.0, "spread")))) \
        == ["docs/configuration.md"]
    assert gendocs.stale_pages(ROOT, gendocs.blocks(types=http_plus)) == ["docs/configuration.md"]
    assert gendocs.stale_pages(ROOT, gendocs.blocks(metrics=[*METRICS.values(), metric])) == ["docs/metrics.md"]
    assert gendocs.stale_pages(ROOT, gendocs.blocks(rules=[*RULES.values(), rule])) == ["docs/lint.md"]
    changed_doc = [dataclasses.replace(f, doc="a new meaning") if f.name == "interval" else f for f in COMMON]
    assert gendocs.stale_pages(ROOT, gendocs.blocks(common=changed_doc)) == ["docs/configuration.md"]


def test_check_names_the_stale_page_and_a_rewrite_mends_it(tmp_path: pathlib.Path) -> None:
    shutil.copytree(DOCS, tmp_path / "docs")
    page = tmp_path / "docs" / "metrics.md"
    page.write_text(page.read_text().replace("| `sidecar_phase` |", "| `sidecar_lifecycle_phase` |"))
    command = [sys.executable, str(ROOT / "tools" / "gendocs.py"), "--root", str(tmp_path)]
    stale = subprocess.run([*command, "--check"], capture_output=True, text=True, timeout=60)
    assert (stale.returncode, stale.stdout) == (1, "docs/metrics.md is stale: run python tools/gendocs.py\n")
    assert "sidecar_lifecycle_phase" in page.read_text()  # --check changes nothing
    rewrite = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert (rewrite.returncode, rewrite.stdout) == (0, "rewrote docs/metrics.md\n")
    assert page.read_text() == (DOCS / "metrics.md").read_text()
    assert subprocess.run([*command, "--check"], capture_output=True, timeout=60).returncode == 0


def test_a_page_without_its_markers_is_refused() -> None:
    with pytest.raises(ValueError, match=r"docs/lint\.md: needs each of these marker pairs exactly once: lint-rules"):
        gendocs.render("# Linting\n\nno table here\n", {"lint-rules": "| rule |\n"}, "docs/lint.md")


def test_the_readme_opens_with_the_two_commands_and_ci_runs_its_test_command() -> None:
    commands = fenced(README, "sh")[0].splitlines()
    assert commands[0].startswith("python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/sidecar-agent run")
    assert commands[1].startswith("python3 tools/test.py ")
    # CI runs that same script, its test run under coverage (which is `python -m pytest`, measured).
    assert "\npython3 tools/test.py --coverage" in (ROOT / ".ci" / "run").read_text()
    assert len(README.splitlines()) <= 200, "the README is a front page; the reference lives in docs/"


def test_every_page_is_linked_from_the_readme_and_the_index() -> None:
    index = (DOCS / "index.md").read_text()
    for page in sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md"):
        assert f"(docs/{page})" in README, f"the README does not link docs/{page}"
        assert f"({page})" in index, f"docs/index.md does not link {page}"
    assert {f"{name}.md" for name in PAGES} <= {p.name for p in DOCS.glob("*.md")}


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_reaches_a_file_and_its_heading() -> None:
    broken = []
    for source in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = re.sub(r"^```.*?^```$", "", source.read_text(), flags=re.MULTILINE | re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (source.parent / path).resolve() if path else source
            if not file.exists():
                broken.append(f"{source.name}: {target}")
            elif anchor and anchor not in {slug(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), re.MULTILINE)}:
                broken.append(f"{source.name}: {target} (no such heading)")
    assert broken == []


def test_nothing_in_the_repository_points_outside_it() -> None:
    outside = "../" + "shared"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    hits = [f for f in files if (ROOT / f).is_file() and outside in (ROOT / f).read_text(errors="replace")]
    assert hits == []


def test_the_readme_minimal_pod_lints_clean_and_its_config_loads(tmp_path: pathlib.Path) -> None:
    pod = next(block for block in fenced(README, "yaml") if "kind: Pod" in block)
    (tmp_path / "pod.yaml").write_text(pod)
    result = lint_paths([str(tmp_path / "pod.yaml")])
    assert [(f.rule, f.message) for f in result.findings] == []
    assert result.objects == 1
    config_map = next(doc for doc in pod.split("\n---\n") if "kind: ConfigMap" in doc)
    config = load(yaml.safe_load(config_map)["data"]["agent.yaml"], {"AGENT_TOKEN": "change-me"})
    assert [c.name for c in config.checks] == ["app-http", "app-process"]


def test_the_plugin_example_builds_a_check_type(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = fenced((DOCS / "plugins.md").read_text(), "python")[0]
    (tmp_path / "my_checks").mkdir()
    (tmp_path / "my_checks" / "kafka.py").write_text(example)
    monkeypatch.syspath_prepend(str(tmp_path))
    check_type = importlib.import_module("my_checks.kafka").TYPE
    try:
        assert isinstance(check_type, CheckType) and check_type.name == "kafka"
        values = parse_mapping({"address": "kafka:9092"}, check_type.fields, "checks.events", Problems())
        assert values == {"address": ("kafka", 9092)}
        params = check_type.params(**values)
        assert check_type.is_dependency(params) and check_type.extra == "kafka"
        check = check_type.create(SimpleNamespace(params=params, timeout=1.0), None)
        assert callable(check.run) and callable(check.close)
    finally:
        for name in ("my_checks.kafka", "my_checks"):
            sys.modules.pop(name, None)
