"""tools/test.py, the README's test command: it makes a new PostgreSQL cluster usable by the tests.

A throwaway cluster made with Debian's defaults (scram-sha-256 for host connections, no database `test`) refuses
the tests' passwordless `postgres://postgres@127.0.0.1/test`; after the script's PostgreSQL step it accepts it on
127.0.0.1 and ::1, and a second run of the step changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, newest_postgresql

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def new_cluster() -> Iterator[tuple[str, str, int]]:
    """A cluster just made by pg_createcluster, with Debian's defaults, started on a free port; dropped after."""
    version, name, port = newest_postgresql(), f"scratch{os.getpid()}", free_port()
    made = subprocess.run(["pg_createcluster", "--port", str(port), "--start", version, name],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    try:
        yield version, name, port
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, name], capture_output=True, timeout=120)


def connect(host: str, port: int) -> subprocess.CompletedProcess[str]:
    """SELECT 1 as the tests connect: user postgres, database test, no password (-w: never prompt)."""
    return subprocess.run(["psql", "-w", "-XtA", f"postgresql://postgres@{host}:{port}/test", "-c", "SELECT 1"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PGPASSWORD": ""}, cwd="/")


def test_the_script_gives_a_new_cluster_passwordless_access_to_the_test_database(new_cluster: tuple[str, str, int]) -> None:
    version, name, port = new_cluster
    hba = Path("/etc/postgresql") / version / name / "pg_hba.conf"
    before = connect("127.0.0.1", port)
    assert before.returncode != 0 and "no password supplied" in before.stderr, before.stderr

    step = [sys.executable, str(ROOT / "tools" / "test.py"), "--postgres-only", f"{version}/{name}"]
    done = subprocess.run(step, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for host in ("127.0.0.1", "[::1]"):
        after = connect(host, port)
        assert (after.returncode, after.stdout) == (0, "1\n"), (host, after.stderr)

    configured = hba.read_text()
    again = subprocess.run(step, capture_output=True, text=True, timeout=120)
    assert (again.returncode, again.stderr) == (0, ""), "a second run changes nothing and says nothing"
    assert hba.read_text() == configured
    # Only the test database is opened: another one still needs the password.
    other = subprocess.run(["psql", "-w", "-XtA", f"postgresql://postgres@127.0.0.1:{port}/postgres", "-c", "SELECT 1"],
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert other.returncode != 0 and "no password supplied" in other.stderr, other.stderr
