"""Modules the agent imports only when they are needed: each costs every pod memory for nothing otherwise."""

import subprocess
import sys

from tests.children import replaced_env

LOADS_A_CONFIG = """
import sys
from agent.config import load
load("checks: {web: {type: http, url: 'http://127.0.0.1:1/'}, port: {type: tcp, address: '127.0.0.1:1'}}", {})
import agent.runtime.daemon
print(sorted(m for m in ("importlib.metadata", "ctypes", "difflib") if m in sys.modules))
"""


def test_built_in_check_types_need_neither_the_plug_in_registry_nor_ctypes_nor_difflib() -> None:
    done = subprocess.run([sys.executable, "-c", LOADS_A_CONFIG], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_an_unknown_type_still_reads_the_registry_and_suggests_a_name() -> None:
    from agent.config import ConfigError, load

    try:
        load("checks: {web: {type: htp, url: 'http://127.0.0.1:1/'}}", {})
    except ConfigError as exc:
        assert "unknown check type 'htp'; did you mean 'http'?" in str(exc)
    else:
        raise AssertionError("an unknown check type was accepted")


BUILDS_AN_AGENT = """
import asyncio, sys
from agent.config import load
from agent.logs import Scrubber
from agent.runtime.daemon import Agent

async def main():
    Agent(load(sys.argv[1], {}), Scrubber())

asyncio.run(main())
print(sorted(m for m in ("agent.kube.endpoints_client", "agent.kube.endpoints_state") if m in sys.modules))
"""


def agent_modules(config: str) -> str:
    done = subprocess.run([sys.executable, "-c", BUILDS_AN_AGENT, config], capture_output=True, text=True, timeout=60,
                          check=True, env=replaced_env({"PATH": "/usr/bin:/bin"}))  # no KUBERNETES_* of ours
    return done.stdout.strip().splitlines()[-1]


def test_the_endpoints_watch_is_imported_only_when_the_config_asks_for_it() -> None:
    assert agent_modules("shutdown: {drain_delay: 5s}") == "[]"
    assert agent_modules("shutdown: {drain_delay: 5s, endpoints: {enabled: false}}") == "[]"
    assert agent_modules("shutdown: {drain_delay: 5s, endpoints: {enabled: auto}}") == \
        "['agent.kube.endpoints_client', 'agent.kube.endpoints_state']"


WRAPS_FOR_AN_IP = """
import ssl, sys
from agent.kube.endpoints_client import _AsciiHostContext
context = _AsciiHostContext(ssl.PROTOCOL_TLS_CLIENT)
tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=sys.argv[1])
print(tls.server_hostname, sorted(m for m in ("encodings.idna", "stringprep") if m in sys.modules))
"""


def wrapped(host: str) -> str:
    done = subprocess.run([sys.executable, "-c", WRAPS_FOR_AN_IP, host], capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.strip()


def test_the_watch_names_an_ascii_api_host_without_the_idna_codec() -> None:
    # The codec's first use imports encodings.idna and stringprep: ~0.1 MiB of RSS for an IP address.
    assert wrapped("10.96.0.1") == "10.96.0.1 []"
    assert wrapped("kubernetes.default.svc") == "kubernetes.default.svc []"
    # Any other name is encoded as ssl always did.
    assert wrapped("bücher.example") == "xn--bcher-kva.example ['encodings.idna', 'stringprep']"
