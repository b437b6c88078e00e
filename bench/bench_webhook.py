"""Benchmark of the admission webhook (issue 11): reviews per second and p99 latency at 1 and at 20 concurrent requests.

Run as `.venv/bin/python bench/bench_webhook.py` from the repository root (about 30 seconds; the table to stdout,
progress to stderr). It starts `sidecar-agent webhook`'s server in its own process over TLS on a free loopback port
(a self-signed certificate made with openssl), then sends real AdmissionReviews of a two-container Pod through
aiohttp's client over keep-alive connections, as the API server does: one worker, then 20 at once, each for a
fixed time after a warm-up. Every answer is checked (200, the uid echoed, a patch). The mutation is agent.inject's
when that package is installed, else the tests' small mutation (tests/webhook/mutation.py), and the table says which.

Every process it starts is stopped by its pid before it exits; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import platform
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.*, when run as bench/bench_webhook.py

from tests.servers import Certs, free_port  # noqa: E402
from tests.webhook.reviews import pod, review  # noqa: E402

# Targets of issue 11.
TARGETS = {1: 0.025, 20: 0.100}  # p99 in seconds at 1 and at 20 concurrent reviews
MIB = 1024 * 1024


def real_injection() -> bool:
    return importlib.util.find_spec("agent.inject") is not None


def serve(cert: str, key: str, port: int) -> int:
    """The server process: agent.webhook.server.serve with agent.inject, or with the tests' mutation when it is absent."""
    from agent import logs
    from agent.cli import _run_loop
    from agent.webhook.server import Settings, injection
    from agent.webhook.server import serve as serve_webhook

    settings = Settings(cert=cert, key=key, host="127.0.0.1", port=port)
    if real_injection():
        mutate, refusals = injection(settings)
    else:
        from tests.webhook.mutation import Refused, add_agent
        mutate, refusals = add_agent, (Refused,)
    logs.setup("warning", "text")  # one line per review would measure the log pipe, not the webhook
    return _run_loop(serve_webhook(settings, mutate, refusals))


@dataclass
class Round:
    concurrency: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(url: str, context: ssl.SSLContext, concurrency: int, seconds: float, warmup: float) -> Round:
    """`concurrency` workers, each sending one review after another on its own keep-alive connection."""
    request = review(pod())
    body, uid = json.dumps(request).encode(), request["request"]["uid"]
    connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one() -> float:
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as answer:
                data = await answer.read()
            elapsed = time.perf_counter() - started
            response = json.loads(data)["response"] if answer.status == 200 else {}
            if response.get("uid") != uid or "patch" not in response:
                raise RuntimeError(f"unexpected answer {answer.status}: {data[:200]!r}")
            return elapsed

        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < until:
                try:
                    elapsed = await one()
                except (TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
                    errors += 1
                    print(f"error: {exc}", file=sys.stderr)
                    continue
                if record:
                    latencies.append(elapsed)

        await asyncio.gather(*(worker(time.perf_counter() + warmup, False) for _ in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Round(concurrency, elapsed, latencies, errors)


def start_server(cert: Path, key: Path, context: ssl.SSLContext, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The server process on a free port, once its /healthz answers."""
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(cert), str(key),
                                    str(port)], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context,
                                                                  timeout=5) as answer:
            if answer.status == 200:
                return process, f"https://127.0.0.1:{port}/inject"
        time.sleep(0.1)
    stop(process)
    raise SystemExit(f"the webhook did not start:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> int:
    process.terminate()
    try:
        code = process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait(10)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=3, metavar=("CERT", "KEY", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per round (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time before each round (default: %(default)s)")
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve[0], args.serve[1], int(args.serve[2]))

    busy = psutil.cpu_percent(interval=1.0)
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as folder:
        key, cert = Certs(Path(folder)).make("webhook", dns_name="localhost", ip="127.0.0.1")
        context = ssl.create_default_context(cafile=str(cert))
        process, url = start_server(cert, key, context, Path(folder) / "webhook.log")
        try:
            rounds = []
            for concurrency in TARGETS:
                print(f"{concurrency} concurrent reviews for {args.seconds:g} s ...", file=sys.stderr)
                rounds.append(asyncio.run(load(url, context, concurrency, args.seconds, args.warmup)))
            rss = psutil.Process(process.pid).memory_info().rss
        finally:
            code = stop(process)
    mutation = "agent.inject" if real_injection() else "the tests' small mutation (agent.inject is not installed)"
    print(f"Webhook benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {psutil.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}; mutation: {mutation}; "
          f"machine {busy:.0f}% busy just before the run.\n")
    print("| figure | value | target | met |\n| --- | ---: | --- | --- |")
    for done in rounds:
        target = TARGETS[done.concurrency]
        p99 = done.quantile(0.99)
        print(f"| reviews/s at {done.concurrency} concurrent | {done.rate:,.0f} |  |  |")
        print(f"| p50 at {done.concurrency} concurrent | {done.quantile(0.5) * 1000:.2f} ms |  |  |")
        print(f"| p99 at {done.concurrency} concurrent | {p99 * 1000:.2f} ms | ≤ {target * 1000:.0f} ms | "
              f"{'**yes**' if p99 <= target else '**no**'} |")
        print(f"| reviews / errors at {done.concurrency} concurrent | {len(done.latencies):,} / {done.errors} |  |  |")
    print(f"| server RSS after the load | {rss / MIB:.1f} MiB |  |  |")
    print(f"| server exit code after SIGTERM | {code} | 0 | {'**yes**' if code == 0 else '**no**'} |")
    met = all(r.quantile(0.99) <= TARGETS[r.concurrency] and not r.errors for r in rounds) and code == 0
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
