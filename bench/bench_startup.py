"""Benchmark: the CPU each manifest's agent takes to start serving, against its CPU limit (was asserted in
tests/deploy/test_live.py; timing belongs here). `python bench/bench_startup.py [--runs N]` prints a Markdown table.

For each workload of deploy/kubernetes, the agent runs its ConfigMap's config (as tests/deploy/test_live.py runs it)
`--runs` times; the CPU-seconds it used until /agent/readyz answers 200, divided by the container's CPU limit, is how
long it would take to start throttled to that limit. The target: 2.5 s, well inside the probes' start-up window.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from agent.testing import run_agent  # noqa: E402
from tests.deploy.manifests import cpu_cores, workloads  # noqa: E402

TARGET_SECONDS = 2.5


def startup_cpu(config: str, env: dict[str, str]) -> float:
    """CPU-seconds (user + system) the agent used from its start until /agent/readyz answered 200."""
    with run_agent(config, env=env) as agent:
        agent.wait_status("/agent/readyz", 200)
        used = psutil.Process(agent.proc.pid).cpu_times()
    return float(used.user + used.system)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print("| workload | CPU limit | CPU-seconds to serve (median of runs) | throttled to the limit | target |")
    print("| --- | --- | --- | --- | --- |")
    worst = 0.0
    for workload in workloads():
        limit = cpu_cores(workload.agent["resources"]["limits"]["cpu"])
        runs = [startup_cpu(workload.config_text(), workload.env()) for _ in range(args.runs)]
        cpu = statistics.median(runs)
        worst = max(worst, cpu / limit)
        print(f"| {workload.name} | {limit:g} | {cpu:.2f} | {cpu / limit:.1f} s | <= {TARGET_SECONDS:g} s |")
        print(f"{workload.name}: runs {', '.join(f'{r:.2f}' for r in runs)} CPU-s", file=sys.stderr)
    return 0 if worst <= TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
