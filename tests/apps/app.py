"""A stand-in app for the tests: records the signals it gets (with CLOCK_MONOTONIC, shared by every process)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--log", required=True)
parser.add_argument("--on-term", default="exit:0", help="exit:CODE, or ignore")
parser.add_argument("--exit-after", type=float, default=None, help="exit by itself after this many seconds")
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--orphan", action="store_true", help="leave an orphaned grandchild that exits soon")
parser.add_argument("marker", nargs="?")
args = parser.parse_args()
log = open(args.log, "a", buffering=1)  # noqa: SIM115 - open for the whole life of the app


def record(what: str) -> None:
    log.write(f"{what} {time.monotonic():.6f}\n")


def on_term(signum: int, frame: object) -> None:
    record("SIGTERM")
    if args.on_term.startswith("exit:"):
        record("graceful")
        os._exit(int(args.on_term.split(":")[1]))


def on_other(signum: int, frame: object) -> None:
    record(signal.Signals(signum).name)


signal.signal(signal.SIGTERM, on_term if args.on_term != "default" else signal.SIG_DFL)
signal.signal(signal.SIGUSR1, on_other)
signal.signal(signal.SIGHUP, on_other)
signal.signal(signal.SIGWINCH, on_other)
record(f"started:{os.getpid()}")
if args.orphan:
    # sh starts a sleep in the background and exits: the sleep is orphaned and re-parented to the reaper.
    subprocess.run(["/bin/sh", "-c", "sleep 0.3 & echo $! > " + args.log + ".orphan"], check=True)
started = time.monotonic()
while args.exit_after is None or time.monotonic() - started < args.exit_after:
    time.sleep(0.02)
record("exit")
sys.exit(args.exit_code)
