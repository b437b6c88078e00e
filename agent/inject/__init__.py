"""Adding the agent to pod templates, and taking it back out: one code path for `sidecar-agent inject` and the webhook.

`api` (the public types), `probes` (the app's probes as checks), `settings` (the config and the checks annotation),
`container` (the agent's container and the kubelet probes that ask it), `hooks` (the shutdown mechanism),
`edits` (edits that can be undone), `template` (one pod template), `documents` (YAML files in and out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.inject import template as _template
from agent.inject.api import InjectError, Options, Outcome

__all__ = ["InjectError", "Options", "Outcome", "inject_template", "remove_template"]


def inject_template(template: Mapping[str, Any], options: Options, *, kind: str = "Pod") -> Outcome:
    """The pod template ({"metadata", "spec"}) with the agent added; `kind` is the workload's (Jobs and CronJobs
    complete when the app finishes). Skipped templates come back unchanged with the reason in `notes`."""
    return _template.inject(template, options, kind)


def remove_template(template: Mapping[str, Any]) -> Outcome:
    """The pod template as it was before injection (unchanged, with a note, when it was not injected)."""
    return _template.remove(template)
