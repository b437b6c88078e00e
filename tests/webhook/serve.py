"""`sidecar-agent webhook` as a process, with the test mutation in place of agent.inject.

Usage: python -m tests.webhook.serve CERT KEY — the same serve() the command runs, on a free loopback port.
"""

from __future__ import annotations

import sys

from agent import logs
from agent.cli import _run_loop
from agent.webhook.server import Settings, serve
from tests.webhook.mutation import Refused, add_agent

if __name__ == "__main__":
    logs.setup("info", "json")
    sys.exit(_run_loop(serve(Settings(cert=sys.argv[1], key=sys.argv[2], host="127.0.0.1", port=0), add_agent, (Refused,))))
