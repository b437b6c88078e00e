"""Rewrite the golden files that tests compare output with: `python tools/update_goldens.py`, then review `git diff`.

The golden files are the expected output of `sidecar-agent inject` over tests/inject/corpus (each file, for each
Kubernetes version the test knows) and of `sidecar-agent lint` over tests/lint/corpus/combined (text and JSON).
A test run never writes them: a test that wrote its own expectation would compare the output with itself. This
command makes them the way the tests make their output (it uses the tests' own helpers), and says which changed.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the tests package, and agent from a source tree that was never installed
    sys.path.insert(0, str(ROOT))


def write(path: pathlib.Path, text: str) -> bool:
    """Write TEXT to PATH if it differs; whether it did."""
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def inject_goldens() -> dict[pathlib.Path, str]:
    """tests/inject/golden: each corpus file injected for each version, as tests/inject/test_corpus.py does."""
    corpus = importlib.import_module("tests.inject.test_corpus")
    return {corpus.GOLDEN / f"{path.stem}-{version}.yaml": corpus.inject(path, version) for path, version in corpus.CASES}


def lint_goldens() -> dict[pathlib.Path, str]:
    """tests/lint/golden: the combined corpus linted as text and JSON, as tests/lint/test_cli.py does (from the root)."""
    cli = importlib.import_module("agent.cli")
    test_cli = importlib.import_module("tests.lint.test_cli")
    outputs = {}
    os.chdir(ROOT)  # the output names paths as given: relative to the repository
    for fmt, name in (("text", "combined.txt"), ("json", "combined.json")):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["lint", "--format", fmt, test_cli.COMBINED], env={})
        if code != 1:
            sys.exit(f"update_goldens: lint of {test_cli.COMBINED} exited {code}, not 1 (findings)")
        outputs[test_cli.GOLDEN / name] = out.getvalue()
    return outputs


def main() -> int:
    """Rewrite every golden file; name those that changed."""
    changed = [path for path, text in {**inject_goldens(), **lint_goldens()}.items() if write(path, text)]
    for path in changed:
        print(f"updated {path.relative_to(ROOT)}")
    print(f"{len(changed)} golden files changed; review them with git diff", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
