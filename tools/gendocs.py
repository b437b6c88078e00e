"""Write the reference tables of docs/ from the code's own definitions: config fields, metrics, lint rules.

`python tools/gendocs.py` rewrites the blocks between the marker comments of each page;
`python tools/gendocs.py --check` changes nothing and exits 1, naming each stale page.
A block is `<!-- BEGIN generated: NAME -->` ... `<!-- END generated: NAME -->`; text outside them is written by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a source tree that was never installed
    sys.path.insert(0, str(ROOT))

from agent import checks  # noqa: E402
from agent.config import COMMON, TOP  # noqa: E402
from agent.fields import (  # noqa: E402
    Enum,
    Field,
    Section,
)
from agent.lint.findings import RULES, Rule  # noqa: E402
from agent.runtime.metrics import LABEL_VALUES, METRICS, MetricDef  # noqa: E402
from agent.runtime.shutdown import ShutdownOutcome  # noqa: E402
from agent.runtime.tasks import TaskKind  # noqa: E402
from agent.webhook.admission import ReviewResult  # noqa: E402

BLOCK = re.compile(r"(<!-- BEGIN generated: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- END generated: (?P=name) -->)",
                   re.DOTALL)


def _flow(value: Any) -> str:
    """A dumped default as it would be written in YAML flow style."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if value == "":
        return '""'
    return str(value)


def default_text(f: Field) -> str:
    if f.required:
        return "*required*"
    if f.default is None:
        return "none"
    return f"`{_flow(f.kind.dump(f.default))}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def field_rows(fields: Sequence[Field], prefix: str = "") -> Iterable[tuple[str, str, str, str]]:
    """Rows of (key, kind, default, meaning); a section's keys follow it with dotted names."""
    for f in fields:
        key = prefix + f.name
        if isinstance(f.kind, Section):
            if f.default is None or f.doc:  # an optional section is a key of its own
                yield key, f.kind.shape(), default_text(f), f.doc
            yield from field_rows(f.kind.fields, key + ".")
            continue
        yield key, f.kind.shape(), default_text(f), f.doc


def field_table(fields: Sequence[Field]) -> str:
    lines = ["| key | kind | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{k}` | {_cell(kind)} | {_cell(d)} | {_cell(doc)} |" for k, kind, d, doc in field_rows(fields)]
    return "\n".join(lines) + "\n"


def check_type_tables(types: Mapping[str, Sequence[Field]]) -> str:
    parts = []
    for name, fields in sorted(types.items()):
        parts.append(f"#### `{name}`\n\n" + (field_table(fields) if fields else "No keys of its own.\n"))
    return "\n".join(parts)


def metric_table(metrics: Iterable[MetricDef], label_values: Mapping[str, Sequence[str]]) -> str:
    def labels(m: MetricDef) -> str:
        out = []
        for label in m.labels:
            values = label_values.get(label)
            out.append(f"`{label}`" + (" (" + ", ".join(f"`{v}`" for v in values) + ")" if values else ""))
        return ", ".join(out) or "none"

    lines = ["| name | type | labels | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{m.name}` | {m.type} | {labels(m)} | {_cell(m.help)} |" for m in metrics]
    return "\n".join(lines) + "\n"


def rule_table(rules: Iterable[Rule]) -> str:
    lines = ["| rule | level | what goes wrong |", "| --- | --- | --- |"]
    lines += [f"| `{r.id}` | {r.severity} | {_cell(r.summary)} |" for r in rules]
    return "\n".join(lines) + "\n"


def value_table(heading: str, members: Iterable[Any]) -> str:
    """One row per member of a fixed set (an enum whose members carry a `description`)."""
    lines = [f"| {heading} | meaning |", "| --- | --- |"]
    lines += [f"| `{m.value}` | {_cell(m.description)} |" for m in members]
    return "\n".join(lines) + "\n"


def builtin_types() -> list[str]:
    """The check types that ship with the agent (a plug-in installed here documents itself)."""
    return [name for name in checks.type_names() if name in checks.BUILTIN]


def blocks(top: Sequence[Field] = TOP, common: Sequence[Field] = COMMON,
           types: Mapping[str, Sequence[Field]] | None = None,
           metrics: Iterable[MetricDef] = METRICS.values(),
           rules: Iterable[Rule] = RULES.values()) -> dict[str, dict[str, str]]:
    """Page -> block name -> generated text, from the code's definitions (or the ones given, for tests)."""
    if types is None:
        types = {name: tuple(checks.load_type(name).fields) for name in builtin_types()}
    # The type key's choices are those documented, not whatever plug-ins this machine has installed.
    common = [dataclasses.replace(f, kind=Enum(sorted(types))) if f.name == "type" else f for f in common]
    return {
        "docs/configuration.md": {
            "config-top": field_table(top),
            "config-common": field_table(common),
            "config-check-types": check_type_tables(types),
        },
        "docs/metrics.md": {"metrics": metric_table(metrics, LABEL_VALUES)},
        "docs/shutdown.md": {"shutdown-outcomes": value_table("outcome", ShutdownOutcome)},
        "docs/probes.md": {"task-kinds": value_table("task", TaskKind)},
        "docs/webhook.md": {"review-results": value_table("result", ReviewResult)},
        "docs/lint.md": {"lint-rules": rule_table(rules)},
    }


def render(text: str, generated: Mapping[str, str], page: str) -> str:
    """The page with each marked block replaced; a block the page lacks, or one it has twice, is an error."""
    seen: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in generated:
            raise ValueError(f"{page}: unknown generated block {name!r}")
        seen.append(name)
        return match.group(1) + "\n" + generated[name] + "\n" + match.group(4)  # blank lines: Markdown ends the table

    out = BLOCK.sub(replace, text)
    missing = sorted(set(generated) - set(seen))
    if missing or len(seen) != len(set(seen)):
        raise ValueError(f"{page}: needs each of these marker pairs exactly once: {', '.join(sorted(generated))}")
    return out


def stale_pages(root: pathlib.Path, pages: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """The pages whose generated blocks differ from what the definitions give."""
    pages = blocks() if pages is None else pages
    return [page for page, generated in pages.items()
            if render((root / page).read_text(), generated, page) != (root / page).read_text()]


def write_pages(root: pathlib.Path, pages: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Rewrite the stale pages; return their names."""
    pages = blocks() if pages is None else pages
    stale = stale_pages(root, pages)
    for page in stale:
        path = root / page
        path.write_text(render(path.read_text(), pages[page], page))
    return stale


def main(argv: Sequence[str] | None = None, write: Callable[[str], object] = print) -> int:
    parser = argparse.ArgumentParser(description="Write the reference tables of docs/ from the code's definitions.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a page is stale")
    parser.add_argument("--root", type=pathlib.Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_pages(args.root)
            for page in stale:
                write(f"{page} is stale: run python tools/gendocs.py")
            return 1 if stale else 0
        for page in write_pages(args.root):
            write(f"rewrote {page}")
    except (OSError, ValueError) as exc:
        write(f"gendocs: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
