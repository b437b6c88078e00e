"""`sidecar-agent lint`: read workload manifests (and the agent's config) and report the probe and shutdown mistakes.

Reading files is `source`; everything after it is pure: `model` (objects), `agentinfo` (the agent and its config),
`rules_probes` and `rules_shutdown` (the rules), `runner` (runs them), `render` (text and JSON).
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.lint.findings import RULES, Finding, InputError
from agent.lint.runner import Result, lint_documents, lint_objects
from agent.lint.source import read_file, read_paths

__all__ = ["RULES", "Finding", "InputError", "Result", "lint_documents", "lint_objects", "lint_paths"]


def lint_paths(paths: Sequence[str], agent_config: str | None = None) -> Result:
    """Lint the files and directories given; `agent_config` is a config file that overrides the one found beside the
    workloads. Raises InputError for unreadable input."""
    given = None
    if agent_config is not None:
        data = read_file(agent_config)
        try:
            given = (agent_config, data.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise InputError(agent_config, None, "not UTF-8 text (is this the agent's YAML config?)") from None
    sources = read_paths(paths)
    result = lint_documents(sources.documents, given)
    result.files, result.skipped = sources.files, sources.skipped
    return result
