"""Time `sidecar-agent inject` over 1,000 workloads: in process (the code path the webhook shares) and as a command.

Run: .venv/bin/python bench/bench_inject.py [--workloads N] [--rounds R]
The workloads are the corpus's (tests/inject/corpus) repeated under new names until there are N, in one file.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.inject import Options  # noqa: E402
from agent.inject.documents import TEMPLATES, run  # noqa: E402

CORPUS = ROOT / "tests" / "inject" / "corpus"


def workloads(count: int) -> str:
    """N injectable workloads (every kind of the corpus, round robin), renamed so each is its own."""
    shapes = []
    for path in sorted(CORPUS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            items = doc["items"] if doc["kind"] == "List" else [doc]
            shapes += [d for d in items if d["kind"] in TEMPLATES and path.name != "skipped.yaml"]
    docs = []
    for i in range(count):
        doc = yaml.safe_load(yaml.safe_dump(shapes[i % len(shapes)]))
        doc["metadata"]["name"] = f"{doc['metadata']['name']}-{i}"
        docs.append(doc)
    return yaml.safe_dump_all(docs, sort_keys=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "workloads.yaml"
        path.write_text(workloads(args.workloads))
        size = path.stat().st_size
        for version in ((1, 28), (1, 33)):
            inside = []
            for _ in range(args.rounds):
                began = time.perf_counter()
                report = run([str(path)], Options(kubernetes_version=version))
                inside.append(time.perf_counter() - began)
            command = []
            for _ in range(args.rounds):
                began = time.perf_counter()
                subprocess.run([sys.executable, "-m", "agent", "inject", "--kubernetes-version", f"{version[0]}.{version[1]}",
                                str(path)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                command.append(time.perf_counter() - began)
            print(f"{version[0]}.{version[1]}: {args.workloads} workloads ({size / 1e6:.1f} MB in, "
                  f"{len(report.text) / 1e6:.1f} MB out; {report.injected} injected, {report.skipped} skipped): "
                  f"in process median {statistics.median(inside):.2f}s (best {min(inside):.2f}s, "
                  f"{statistics.median(inside) / args.workloads * 1e3:.2f} ms per workload); "
                  f"command median {statistics.median(command):.2f}s (best {min(command):.2f}s)")


if __name__ == "__main__":
    main()
