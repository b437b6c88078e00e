"""The webhook as a process: bad flags exit 2 with a message naming the flag, never a traceback; SIGTERM
lets the review in flight finish, then the process stops cleanly with exit code 0."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.servers import Certs
from tests.webhook.apiserver import node
from tests.webhook.apiserver import serve as serve_api
from tests.webhook.conftest import TlsPair
from tests.webhook.mutation import SLOW
from tests.webhook.reviews import client_context, patched, pod, review

ROOT = Path(__file__).resolve().parents[2]


def webhook_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "webhook", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


@pytest.mark.parametrize(("flags", "named"), [
    ([], "--tls-cert"),
    (["--tls-cert", "{cert}"], "--tls-key"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--kubernetes-version", "1"], "--kubernetes-version"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--kubernetes-version", "one.thirty"], "--kubernetes-version"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--listen", "localhost"], "--listen"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--listen", ":70000"], "--listen"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--image", " "], "--image"),
    (["--tls-cert", "/nonexistent/tls.crt", "--tls-key", "{key}"], "--tls-cert"),
    (["--tls-cert", "{cert}", "--tls-key", "{other_key}"], "--tls-key"),
    (["--tls-cert", "{key}", "--tls-key", "{key}"], "--tls-cert"),
], ids=["no-cert", "no-key", "version-one-number", "version-words", "listen-no-port", "listen-port-range", "empty-image",
        "missing-cert", "mismatched-key", "key-as-cert"])
def test_bad_flags_exit_2_naming_the_flag(flags: list[str], named: str, tls: TlsPair,
                                          pairs: dict[str, TlsPair]) -> None:
    values = {"cert": str(tls.cert), "key": str(tls.key), "other_key": str(pairs["second"].key)}
    done = webhook_command(*(flag.format(**values) for flag in flags))
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
    assert "Traceback" not in done.stderr


def lines_of(process: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """The process's stdout lines, read by a thread (which ends with the process) so that a test waits with a deadline."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put("")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


def wait_for_line(lines: queue.Queue[str], text: str, seen: list[str]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        seen.append(line)
        if text in line:
            return line
        if line == "":
            break
    raise AssertionError(f"no line with {text!r} in:\n{''.join(seen)}")


def test_sigterm_lets_the_review_in_flight_finish_then_exits_0(tls: TlsPair, tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "tests.webhook.serve", str(tls.cert), str(tls.key)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    lines, reader = lines_of(process)
    try:
        started = json.loads(wait_for_line(lines, "webhook serving on", seen))
        url = f"https://{started['listen']}/inject"
        marker = tmp_path / "in-flight"
        answers: list[Any] = []

        def post() -> None:
            body = json.dumps(review(pod(annotations={SLOW: f"2:{marker}"}))).encode()
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, context=client_context(tls.cert), timeout=60) as answer:
                answers.append((answer.status, json.loads(answer.read())))

        client = threading.Thread(target=post)
        client.start()
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and client.is_alive():
            time.sleep(0.02)
        assert marker.exists(), "the review never reached the mutation"
        process.send_signal(signal.SIGTERM)
        client.join(60)
        assert answers and answers[0][0] == 200 and answers[0][1]["response"]["allowed"] is True
        assert process.wait(60) == 0
        wait_for_line(lines, "received SIGTERM, stopping the webhook", seen)
        wait_for_line(lines, "webhook stopped", seen)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        reader.join(10)
        assert process.stdout is not None
        process.stdout.close()


def test_auto_outside_a_pod_exits_2_naming_the_flag(tls: TlsPair) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    done = subprocess.run([sys.executable, "-m", "agent", "webhook", "--tls-cert", str(tls.cert), "--tls-key",
                           str(tls.key), "--kubernetes-version", "auto"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env)
    assert done.returncode == 2 and "--kubernetes-version auto" in done.stderr and "not in a cluster" in done.stderr
    assert "Traceback" not in done.stderr


ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


async def test_auto_injects_for_the_oldest_kubelet_the_api_server_lists(tls: TlsPair, certs: Certs,
                                                                        tmp_path: Path) -> None:
    """The webhook process as in a pod: the API server from KUBERNETES_SERVICE_HOST/PORT, its CA and the token from
    the service account folder (a tmpfs over /run in a mount namespace that only the webhook sees)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:  # fails with the reason, never skips (tools/test.py: root)
        pytest.fail("needs root and unshare(1) to give the webhook a pod's service account folder in a mount namespace")
    token = "test-token-of-the-webhooks-service-account"
    served = await serve_api(certs, tmp_path, token, [node("a", "v1.31.2"), node("b", "v1.29.4")])
    script = (f"mount -t tmpfs tmpfs /run && mkdir -p {ACCOUNT} && cp {served.ca} {ACCOUNT}/ca.crt && "
              f"cp {served.token_file} {ACCOUNT}/token && exec \"$0\" \"$@\"")
    port = served.url.rsplit(":", 1)[1]
    env = {**os.environ, "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    process = await asyncio.create_subprocess_exec(
        "unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable, "-m", "agent", "webhook",
        "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--listen", "127.0.0.1:0", "--kubernetes-version",
        "auto", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    seen: list[str] = []

    async def line_with(text: str) -> str:
        assert process.stdout is not None
        while True:
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            seen.append(line)
            if text in line:
                return line
            assert line, f"no line with {text!r} in:\n{''.join(seen)}"

    try:
        listen = json.loads(await line_with("webhook serving on"))["listen"]
        changed = json.loads(await line_with("injecting for Kubernetes 1.29"))
        assert (changed["kubernetes"], changed["kubernetes_from"]) == ("1.29", "nodes")
        connector = aiohttp.TCPConnector(ssl=client_context(tls.cert))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(f"https://{listen}/inject", json=review(pod())) as answer:
                response = (await answer.json())["response"]
            async with session.get(f"https://{listen}/metrics") as answer:
                metrics = await answer.text()
        assert 'sidecar_webhook_node_reads_total{result="success"} 1.0' in metrics
        created = patched(pod(), response)
        status = json.loads(created["metadata"]["annotations"]["sidecar-agent.io/status"])
        assert (status["kubernetes"], status["kubernetes_from"], status["sidecar"]) == ("1.29", "nodes", "native")
        assert {r["authorization"] for r in served.api.requests} == {f"Bearer {token}"}
        process.send_signal(signal.SIGTERM)
        await line_with("webhook stopped")
        assert await asyncio.wait_for(process.wait(), 60) == 0
        assert token not in "".join(seen)
        assert not [line for line in seen if '"level": "error"' in line or "Traceback" in line], seen
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await served.runner.cleanup()
