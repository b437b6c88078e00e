"""How far apart the app's preStop hook and the agent's own stop trigger arrive on a pod deletion (issue 18).

Run as `.venv/bin/python bench/bench_hooks.py [--runs 20]` from the repository root; it prints a markdown table
(progress to stderr). On a deletion the kubelet starts every container's kill in its own goroutine at once: the
app's preStop `httpGet /prestop/wait` goes out while, beside it, the agent gets its SIGTERM (a regular sidecar) or
runs its exec preStop `sidecar-agent stop` (a native sidecar: a new process, so a Python start-up). The agent's
`/prestop/wait` waits HOOK_WINDOW for that stop to begin; this measures, per run, with a fresh agent each time:

- `regular`: the hook request and `kill(agent, SIGTERM)` made at the same instant from two threads;
- `native`: the hook request and `sidecar-agent stop` (`python -m agent stop`, as the exec hook runs it) started at
  the same instant from two threads.

The figure is the agent's own: `/prestop/wait` says in its answer how long after the hook the stop began (0 when the
stop was first). Every process it starts is stopped by its pid; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.probes import HOOK_WINDOW  # noqa: E402
from agent.testing import http_request, run_agent  # noqa: E402

CONFIG = "log: {level: info, format: json}\nchecks: {}\nshutdown: {drain_delay: 200ms, relay_signal: false}\n"
BEGAN = re.compile(r"the stop began ([0-9.]+)s after this hook")


def one_run(mode: str) -> float | None:
    """Seconds from the hook's arrival to the stop's start, as the agent saw it (0.0: the stop came first);
    None when the hook was taken for a restart (the stop came later than HOOK_WINDOW)."""
    with run_agent(CONFIG) as agent:
        answers: list[tuple[int, str]] = []
        go = threading.Barrier(2)

        def hook() -> None:
            go.wait()
            answers.append(http_request(agent.url + "/prestop/wait", timeout=30))

        def trigger() -> None:
            go.wait()
            if mode == "regular":
                agent.signal(signal.SIGTERM)
            else:
                env = {**os.environ, "SIDECAR_AGENT_LISTEN": f"127.0.0.1:{agent.port}"}
                subprocess.run([sys.executable, "-m", "agent", "stop"], env=env, capture_output=True, timeout=60,
                               check=True)
                agent.signal(signal.SIGTERM)  # the kubelet's SIGTERM after the hook: ends the agent's wait
        threads = [threading.Thread(target=hook), threading.Thread(target=trigger)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        agent.wait_exit(30)
    _, body = answers[0]
    if "container restart" in body:
        return None
    found = BEGAN.search(body)
    return float(found.group(1)) if found else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"Hook arrival, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} at the start; HOOK_WINDOW {HOOK_WINDOW:g} s.\n")
    print("| mode | runs | stop first | median | p90 | worst | taken for a restart |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in ("regular", "native"):
        gaps: list[float] = []
        restarts = 0
        for run in range(args.runs):
            gap = one_run(mode)
            print(f"{mode} {run + 1}/{args.runs}: {gap}", file=sys.stderr)
            if gap is None:
                restarts += 1
            else:
                gaps.append(gap)
        ordered = sorted(gaps)
        first = sum(1 for g in gaps if g == 0.0)
        p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)] if ordered else float("nan")
        print(f"| {mode} | {args.runs} | {first} | {statistics.median(ordered) if ordered else float('nan'):.3f} s | "
              f"{p90:.3f} s | {max(ordered, default=float('nan')):.3f} s | {restarts} |")
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
    main()
