"""The two output formats of `sidecar-agent lint`: text for people, JSON for tools."""

from __future__ import annotations

import json

from agent.lint.findings import ERROR, INFO, WARNING, Severity
from agent.lint.runner import Result


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary(result: Result) -> dict[str, int]:
    """Counts by severity, and what was read."""
    by = {s: sum(1 for f in result.findings if f.severity == s) for s in Severity}
    return {"errors": by[ERROR], "warnings": by[WARNING], "infos": by[INFO], "objects": result.objects,
            "files": len(result.files)}


def text(result: Result) -> str:
    """One block per finding (`file:line: severity rule object container: message`, then the fix), then a summary."""
    lines = []
    for f in result.findings:
        where = f"{f.file}:{f.line}" if f.line else f.file
        who = f.object + (f" (namespace {f.namespace})" if f.namespace else "")
        who += f" container {f.container}" if f.container else ""
        lines.append(f"{where}: {f.severity} [{f.rule}] {who}: {f.message}")
        lines.append(f"    fix: {f.fix}")
    for file in result.skipped:
        lines.append(f"{file}: skipped: no Kubernetes objects")
    counts = summary(result)
    found = ", ".join(_count(counts[k], s) for k, s in (("errors", "error"), ("warnings", "warning"), ("infos", "note"))
                      if counts[k]) or "no problems"
    lines.append(f"{found} in {_count(counts['objects'], 'workload')} ({_count(counts['files'], 'file')})")
    return "\n".join(lines) + "\n"


def as_json(result: Result) -> str:
    """{"findings": [...], "skipped": [...], "summary": {...}}, indented, keys in a stable order."""
    body = {"findings": [f.as_json() for f in result.findings], "skipped": result.skipped, "summary": summary(result)}
    return json.dumps(body, indent=2) + "\n"
