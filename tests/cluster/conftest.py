"""The cluster tests' fixtures: the images they run and one cluster for the session, built and torn down here.

The cluster is never assumed: `built` builds the binaries (cached per version) and the images, `cluster` starts it
with tools/cluster.py and stops it at the end. The build runs in a fixture, outside the tests' own timeouts (each
module marks its tests `timeout(..., func_only=True)`).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.cluster.harness import AGENT_IMAGE, APP_IMAGE, BASE_IMAGE, HERE, ROOT, STATE, Cluster, cluster_cmd

TIMINGS: dict[str, float] = {}


def _run(cmd: list[str], timeout: float) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def build_app_image() -> None:
    """The test app's image: gunicorn (from this venv, pure Python) and tests/cluster/app on the stand-in base."""
    import gunicorn
    import packaging

    container = subprocess.run(["buildah", "from", "--pull=never", BASE_IMAGE], capture_output=True, text=True,
                               check=True).stdout.strip()
    try:
        for module in (gunicorn, packaging):
            source = pathlib.Path(module.__file__ or "").parent
            with tempfile.TemporaryDirectory() as tmp:  # without the host's __pycache__
                shutil.copytree(source, pathlib.Path(tmp) / source.name, ignore=shutil.ignore_patterns("__pycache__"))
                _run(["buildah", "copy", container, str(pathlib.Path(tmp) / source.name), f"/opt/app/lib/{source.name}"], 60)
        _run(["buildah", "copy", container, str(HERE / "app" / "app.py"), "/opt/app/app.py"], 60)
        _run(["buildah", "config", "--env", "PYTHONPATH=/opt/app/lib:/opt/app", "--user", "65532:65532",
              "--workingdir", "/opt/app", "--entrypoint", "[]", "--cmd",
              '["python", "-m", "gunicorn", "--worker-class", "gthread", "--workers", "1", "--threads", "16", '
              '"--keep-alive", "75", "--graceful-timeout", "5", "--bind", "0.0.0.0:8080", "app:app"]', container], 60)
        _run(["buildah", "commit", "-q", container, APP_IMAGE], 120)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


@pytest.fixture(scope="session")
def built() -> None:
    """The cluster's binaries and pause image (cached), the agent's image and the test app's image."""
    started = time.monotonic()
    proc = cluster_cmd("build")
    assert proc.returncode == 0, proc.stderr[-4000:]
    TIMINGS["build"] = time.monotonic() - started
    started = time.monotonic()
    _run([str(ROOT / ".ci" / "build-image"), "all"], 1800)  # the agent as this checkout's code, always rebuilt
    build_app_image()
    TIMINGS["images"] = time.monotonic() - started


@pytest.fixture(scope="session")
def cluster(built: None) -> Iterator[Cluster]:
    """A running one-node cluster with the images loaded; down at the end of the session."""
    started = time.monotonic()
    proc = cluster_cmd("up")
    assert proc.returncode == 0, proc.stderr[-6000:]
    TIMINGS["up"] = time.monotonic() - started
    proc = cluster_cmd("load-image", AGENT_IMAGE, BASE_IMAGE, APP_IMAGE)  # one archive: the base layer once
    assert proc.returncode == 0, proc.stderr[-4000:]
    try:
        yield Cluster(STATE)
    finally:
        proc = cluster_cmd("down")
        print(f"cluster timings: {TIMINGS}", file=sys.stderr)
        assert proc.returncode == 0, proc.stderr[-4000:]
