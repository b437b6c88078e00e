"""The manifest corpus: every finding of every file, by rule id, object and container; deploy/ lints clean."""

from __future__ import annotations

import pathlib
import re

import pytest

from agent.lint import RULES, lint_paths

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CORPUS = HERE / "corpus"
FILES = sorted(CORPUS.rglob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\S+) (\S+)(?: (\S+))?$", re.MULTILINE)


def expected(path: pathlib.Path) -> set[tuple[str, str, str | None]]:
    """The findings a corpus file declares in its `# expect: RULE KIND/NAME [CONTAINER]` comments."""
    return {(rule, obj, container or None) for rule, obj, container in EXPECT.findall(path.read_text())}


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_corpus_file(path: pathlib.Path) -> None:
    result = lint_paths([str(path)])
    found = {(f.rule, f.object, f.container) for f in result.findings}
    assert found == expected(path)
    assert len(result.findings) == len(found), "one finding per rule, object and container in the corpus"


def test_good_manifests_are_clean() -> None:
    good = sorted((CORPUS / "good").glob("*.yaml"))
    assert len(good) >= 5
    result = lint_paths([str(CORPUS / "good")])
    assert result.findings == [] and result.objects >= 7


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_has_one_bad_manifest_of_its_own(rule: str) -> None:
    path = CORPUS / "bad" / f"{rule}.yaml"
    assert path.exists(), f"no bad manifest for {rule}"
    assert {r for r, _, _ in expected(path)} == {rule}


def test_every_rule_fires_in_a_realistic_manifest_or_its_own() -> None:
    combined = set().union(*(expected(p) for p in (CORPUS / "combined").glob("*.yaml")))
    assert len({r for r, _, _ in combined}) >= 10


def test_deploy_manifests_lint_clean() -> None:
    deploy = ROOT / "deploy"
    assert sorted(deploy.rglob("*.yaml")), "no manifests under deploy/"
    result = lint_paths([str(deploy)])
    assert [f"{f.file}:{f.line}: {f.rule} {f.object} {f.container}: {f.message}" for f in result.findings] == []


def test_the_lint_page_documents_every_rule() -> None:
    page = (ROOT / "docs" / "lint.md").read_text()
    assert [rule for rule in sorted(RULES) if f"| `{rule}` | {RULES[rule].severity} |" not in page] == []
