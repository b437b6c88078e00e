"""The webhook process's default listener takes the API server's calls over IPv4 and IPv6 alike (a Service's pod IPs
are IPv6 in an IPv6 cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.webhook.conftest import TlsPair
from tests.webhook.reviews import client_context
from tests.webhook.test_process import lines_of, wait_for_line

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_listener_answers_over_127_0_0_1_and_ipv6_loopback(tls: TlsPair) -> None:
    process = subprocess.Popen([sys.executable, "-m", "agent", "webhook", "--tls-cert", str(tls.cert), "--tls-key",
                                str(tls.key), "--listen", ":0"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    lines, reader = lines_of(process)
    try:
        listen = json.loads(wait_for_line(lines, "webhook serving on", seen))["listen"]
        assert listen.startswith("[::]:"), listen
        port = listen.rsplit(":", 1)[1]
        context = client_context(tls.cert)
        context.check_hostname = False  # the test certificate names its own hosts; the chain is still verified
        for host in ("127.0.0.1", "[::1]"):
            with urllib.request.urlopen(f"https://{host}:{port}/healthz", context=context, timeout=60) as answer:
                assert answer.status == 200, host
    finally:
        process.terminate()
        process.wait(60)
        reader.join(10)
        assert process.stdout is not None
        process.stdout.close()
