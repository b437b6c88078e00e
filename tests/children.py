"""Children of the tests: the environment of one that must not inherit the test's own (an agent in a pod sees only
its own), and stopping one by its pid."""

from __future__ import annotations

import os
import subprocess

# Under `coverage run` (CI), coverage measures a child Python through this variable ([tool.coverage.run]
# patch = subprocess); a child given a replaced environment keeps it, so that what it runs is measured too.
COVERAGE_VARIABLES = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START", "COVERAGE_FILE")


def replaced_env(variables: dict[str, str]) -> dict[str, str]:
    """Only VARIABLES, plus coverage's own when the tests run under coverage (they change nothing else)."""
    return {**{k: os.environ[k] for k in COVERAGE_VARIABLES if k in os.environ}, **variables}


def stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop a child the test started, by its pid: SIGTERM, then SIGKILL when it has not exited within `grace`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)
