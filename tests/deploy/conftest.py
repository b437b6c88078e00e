"""A live agent whose /metrics offers every metric family, for the alert rules and the dashboard to be checked against."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from agent.testing import run_agent
from tests.deploy.manifests import exposed_names


@pytest.fixture(scope="session")
def live_metrics() -> Iterator[set[str]]:
    """The series names of a live agent's /metrics, with an app to watch and checks of two kinds."""
    tag = f"deploy-metrics-app-{uuid.uuid4().hex[:8]}"
    app = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", tag])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    config = f"""
app: {{match: {{cmdline: "{tag}"}}}}
checks:
  app-process: {{type: process, interval: 200ms, probes: [liveness]}}
  port: {{type: tcp, address: "127.0.0.1:{listener.getsockname()[1]}", interval: 200ms}}
"""
    try:
        with run_agent(config) as agent:
            def scraped() -> str | None:
                code, body = agent.get("/metrics")
                ready = code == 200 and "sidecar_app_up 1.0" in body and 'sidecar_check_up{check="port",type="tcp"} 1.0' in body
                return body if ready else None
            body: str = agent.wait_for(scraped)
            agent.get("/readyz")  # a probe request, so that every probe family has samples
            yield exposed_names(body + agent.get("/metrics")[1])
    finally:
        listener.close()
        app.kill()
        app.wait(10)
