"""Facts about Kubernetes, the kubelet and the commands containers run, which inject, lint and the app watcher share
(the versions that decide the sidecar mode are agent.kube.versions').

A leaf module (the standard library only): each fact is written here once, and no part imports another's rules
to learn it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The agent's port when its config names none: the listener's default, inject's port, what lint assumes.
AGENT_PORT = 8686
# The workloads whose pods run to completion: no rollout, no Service to drain (inject adds no drain, lint asks none).
JOB_KINDS = ("Job", "CronJob")
# The pod's identity from the downward API, as inject adds it (env name, fieldPath) and the endpoints watch reads it.
POD_NAME, POD_NAMESPACE, POD_IPS = "POD_NAME", "POD_NAMESPACE", "POD_IPS"
DOWNWARD_ENV = ((POD_NAME, "metadata.name"), (POD_NAMESPACE, "metadata.namespace"), (POD_IPS, "status.podIPs"))
# terminationGracePeriodSeconds when a pod spec leaves it out.
DEFAULT_GRACE_PERIOD = 30
# The kubelet's defaults for a probe field that is absent (or 0, which the API server defaults the same way).
PROBE_DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1,
                  "failureThreshold": 3}


def probe_values(probe: Mapping[str, Any]) -> dict[str, Any]:
    """A probe's timing fields as the kubelet runs them: each absent or 0 one defaulted, as the API server does."""
    return {k: probe.get(k) or v for k, v in PROBE_DEFAULTS.items()}

# Time the shutdown sequence needs beyond its budget: the hook's round trip, signal delivery, processes exiting and
# the agent flushing and closing. The default config (5 s drain + 20 s stop) fits the default grace period with it.
GRACE_MARGIN_SECONDS = 5.0

# How long the app's probes find no agent when the agent's container crashes. The kubelet restarts a crashed
# container after a back-off that starts at 10 s and doubles up to 5 min (reset after 10 min of running; KEP-4603
# describes today's curve as "a 2x exponential decay starting at 10s and capping at 5 minutes"). The very first
# crash may be restarted at once, but a second one within 10 minutes waits 10 s, so plan for that: 10 s of
# back-off, about 1 s for the kubelet to notice the exit (its PLEG relists every second), and 0.5 s for the agent
# to answer its first probe (measured: 0.3-0.5 s).
KUBELET_BACKOFF_SECONDS = 10.0
KUBELET_NOTICE_SECONDS = 1.0
AGENT_START_SECONDS = 0.5
AGENT_RESTART_SECONDS = KUBELET_BACKOFF_SECONDS + KUBELET_NOTICE_SECONDS + AGENT_START_SECONDS

# Shells run a script's commands as their children; launchers run the app as theirs. Neither passes a stop signal
# on (npm and yarn also run as `node npm-cli.js`, `node yarn.js`).
SHELLS = frozenset({"sh", "bash", "ash", "dash", "zsh", "ksh", "busybox"})
LAUNCHERS = frozenset({"npm", "yarn"})
NODE_LAUNCHER_SCRIPTS = frozenset({"npm", "npm-cli.js", "yarn", "yarn.js", "yarn.cjs"})

