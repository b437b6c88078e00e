"""The image, built and run for real: buildah builds it (.ci/build-image, on a stand-in base) with EXTRAS=all and EXTRAS=.

Each image is mounted (buildah from + mount) and run as a container runtime would: in its own PID and mount
namespaces, its root filesystem a read-only bind, /proc of its own, the image's user (chroot --userspec), environment,
entrypoint and command, on the host's loopback. A build that fails fails every test here; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

import agent
from agent.config import DEFAULT_CONFIG, load
from tests.deploy.manifests import ROOT
from tests.servers import free_port

# A fresh clone debootstraps the base first (about a minute) and both builds download their wheels.
pytestmark = pytest.mark.timeout(1200)

BUILD = ROOT / ".ci" / "build-image"
IMAGES = {"all": agent.IMAGE, "none": f"{agent.IMAGE}-noextras"}
BASE = "docker.io/library/python:3.12-slim"
USER = 65532
# The agent's own layer (the virtualenv) above the base, in MiB. Measured 37.4 (all) and 8.9 (none) on 2026-12-02
# (bench/RESULTS.md); the margin leaves room for dependency updates, not for a dropped strip or a copied cache.
SIZE_BOUND_MIB = {"all": 45, "none": 12}
CONTAINER_PREFIX = "sidecar-agent-test-"
# Runs inside the new namespaces as their PID 1, then becomes the image's command (still PID 1).
RUNNER = """
root=$1; userspec=$2; shift 2
mount --bind "$root" "$root" && mount -o remount,bind,ro "$root" || exit 125
mount --rbind /dev "$root/dev" && mount -t proc proc "$root/proc" || exit 125
exec chroot --userspec="$userspec" --groups="${userspec#*:}" "$root" "$@"
"""


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        pytest.fail(f"{name} is missing: apt-get install buildah podman debootstrap (tools/test.py installs them)")
    return found


def podman(*args: str) -> str:
    done = subprocess.run([tool("podman"), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def buildah(*args: str) -> str:
    done = subprocess.run([tool("buildah"), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Both images, built from this checkout; a failed build fails the tests that use them, with the build's words."""
    for name in ("buildah", "podman", "debootstrap"):
        tool(name)
    log = tmp_path_factory.mktemp("build") / "build-image.log"
    with log.open("wb") as sink:
        build = subprocess.Popen([str(BUILD), "all", "none"], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        code = build.wait(timeout=1100)
    finally:
        if build.poll() is None:  # timed out or interrupted: TERM lets buildah and the script clean up after themselves
            os.killpg(build.pid, signal.SIGTERM)
            try:
                build.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(build.pid, signal.SIGKILL)
                build.wait()
    if code != 0:
        pytest.fail(f".ci/build-image failed (exit {code}):\n{log.read_text(errors='replace')[-4000:]}", pytrace=False)
    return IMAGES


def remove_stale_containers() -> None:
    """Containers this module left when its run was killed (the pid in the name is gone)."""
    for name in buildah("containers", "--format", "{{.ContainerName}}").splitlines():
        match = re.fullmatch(rf"{CONTAINER_PREFIX}(\d+)-\w+", name)
        if match and not psutil.pid_exists(int(match.group(1))):
            subprocess.run([tool("buildah"), "rm", name], capture_output=True, timeout=120)


@dataclass(frozen=True)
class Image:
    extras: str
    reference: str
    root: Path
    config: dict[str, Any]  # the OCI image config: User, Env, Entrypoint, Cmd

    def env(self, **extra: str) -> dict[str, str]:
        return {**dict(e.split("=", 1) for e in self.config.get("Env") or []), **extra}

    def command(self, *args: str) -> list[str]:
        """The entrypoint with `args` (as Kubernetes' `args` would), or with the image's own command when there are none."""
        return [*(self.config.get("Entrypoint") or []), *(args or self.config.get("Cmd") or [])]


@pytest.fixture(scope="module", params=sorted(IMAGES))
def image(request: pytest.FixtureRequest, built: dict[str, str]) -> Iterator[Image]:
    """The image mounted on the host (buildah from + mount); unmounted and removed afterwards."""
    extras: str = request.param
    remove_stale_containers()
    name = f"{CONTAINER_PREFIX}{os.getpid()}-{extras}"
    buildah("from", "--pull-never", "--name", name, built[extras])
    try:
        root = Path(buildah("mount", name))
        config = json.loads(buildah("inspect", "--type", "image", built[extras]))["OCIv1"]["config"]
        yield Image(extras, built[extras], root, config)
    finally:
        subprocess.run([tool("buildah"), "umount", name], capture_output=True, timeout=120)
        subprocess.run([tool("buildah"), "rm", name], capture_output=True, timeout=120)


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    pid: int  # the image's command, PID 1 of its namespace, as the host sees it
    output: Path

    def log(self) -> str:
        return self.output.read_text(errors="replace")


@contextmanager
def run(image: Image, tmp_path: Path, argv: list[str], stdin: Path | None = None, **env: str) -> Iterator[Running]:
    """`argv` in the image as PID 1 of new PID and mount namespaces, on its read-only root, as the image's user."""
    user = str(image.config.get("User") or "0:0")
    userspec = user if ":" in user else f"{user}:{user}"
    output = tmp_path / f"{image.extras}-output.log"
    with output.open("wb") as sink, (stdin or Path(os.devnull)).open("rb") as source:
        process = subprocess.Popen([tool("unshare"), "--mount", "--propagation", "private", "--pid", "--fork", "--",
                                    "/bin/sh", "-c", RUNNER, "runner", str(image.root), userspec, *argv],
                                   env=image.env(**env), stdin=source, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        children: list[psutil.Process] = []
        while not children and process.poll() is None and time.monotonic() < deadline:
            with suppress(psutil.NoSuchProcess):
                children = psutil.Process(process.pid).children()
            time.sleep(0.05)
        assert children, f"no process in the namespace (exit {process.poll()}): {output.read_text()}"
        yield Running(process, children[0].pid, output)
    finally:
        if process.poll() is None:  # a failed test: its PID 1 first, which ends every process of its namespace
            with suppress(psutil.NoSuchProcess):
                for child in psutil.Process(process.pid).children():
                    child.kill()
            process.kill()
        process.wait(timeout=60)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(running: Running, port: int, path: str, status: int, within: float = 90) -> str:
    """The body of `path` once it answers `status`; a generous deadline, as Python starts slowly on a loaded machine."""
    deadline = time.monotonic() + within
    seen: object = None
    while time.monotonic() < deadline:
        assert running.process.poll() is None, f"exited {running.process.returncode}: {running.log()}"
        try:
            code, body = get(port, path)
        except OSError as exc:
            seen = exc
        else:
            if code == status:
                return body
            seen = code
        time.sleep(0.1)
    raise AssertionError(f"{path} never answered {status} (last: {seen}): {running.log()}")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def root_mount_options(pid: int) -> set[str]:
    """The options of the mount the process sees as / (mountinfo: ID PARENT DEV ROOT MOUNTPOINT OPTIONS ...)."""
    mounts = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
    return set([fields[5] for fields in mounts if fields[4] == "/"][-1].split(","))


def test_the_default_command_serves_as_the_images_user_on_a_read_only_root_and_drains_on_sigterm(
        image: Image, tmp_path: Path) -> None:
    port = free_port()
    with run(image, tmp_path, image.command(), SIDECAR_AGENT_LISTEN=f"127.0.0.1:{port}") as running:
        wait_for(running, port, "/livez", 200)
        wait_for(running, port, "/readyz", 200)
        metrics = wait_for(running, port, "/metrics", 200)
        assert re.search(r"^sidecar_probe_requests_total\{.*probe=\"liveness\"", metrics, re.M), metrics[:1000]

        status = proc_status(running.pid)
        assert status["Uid"].split() == [str(USER)] * 4 and status["Gid"].split() == [str(USER)] * 4, status
        assert status["Groups"].split() == [str(USER)], status
        assert int(status["CapEff"], 16) == 0, status
        assert status["NSpid"].split()[-1] == "1", f"not PID 1 of its own namespace: {status['NSpid']}"
        assert "sidecar-agent" in " ".join(psutil.Process(running.pid).cmdline())
        assert "ro" in root_mount_options(running.pid)

        drain_delay = load(DEFAULT_CONFIG, {}).shutdown.drain_delay
        os.kill(running.pid, signal.SIGTERM)
        started = time.monotonic()
        wait_for(running, port, "/readyz", 503, within=drain_delay + 5)  # draining: readiness fails first
        code = running.process.wait(timeout=drain_delay + 60)
        took = time.monotonic() - started
    log = running.log()
    assert code == 0, log
    assert took <= drain_delay + 5, f"{took:.1f} s to exit after SIGTERM; drain_delay is {drain_delay} s"
    # It wrote nothing: the root is read-only, and no attempt to write failed behind a logged error either.
    assert not re.search(r"Read-only file system|Errno 30|Traceback|PermissionError", log), log


ORPHAN_APP = r"""
import os, sys, time
if os.getppid() != 1:
    sys.exit(f"the app's parent is {os.getppid()}, not PID 1")
read, write = os.pipe()
middle = os.fork()
if middle == 0:
    orphan = os.fork()
    if orphan == 0:
        os._exit(0)  # a zombie until PID 1, its parent once the middle child is gone, reaps it
    os.write(write, str(orphan).encode())
    os._exit(0)
orphan = int(os.read(read, 32))
os.waitpid(middle, 0)
deadline = time.monotonic() + 60
while os.path.exists(f"/proc/{orphan}"):
    if time.monotonic() > deadline:
        sys.exit(f"orphan {orphan} was never reaped: " + open(f"/proc/{orphan}/stat").read())
    time.sleep(0.05)
print("orphan reaped", flush=True)
sys.exit(7)
"""


def test_exec_mode_as_pid_1_reaps_an_orphaned_zombie_and_returns_the_apps_exit_code(image: Image, tmp_path: Path) -> None:
    port = free_port()
    argv = image.command("exec", "--", "python", "-c", ORPHAN_APP)
    with run(image, tmp_path, argv, SIDECAR_AGENT_LISTEN=f"127.0.0.1:{port}") as running:
        assert proc_status(running.pid)["NSpid"].split()[-1] == "1"
        code = running.process.wait(timeout=120)
    assert code == 7, running.log()
    assert "orphan reaped" in running.log()


def test_the_extras_decide_which_clients_the_image_holds(image: Image, tmp_path: Path) -> None:
    # Importing the compiled clients also shows that stripping their extension modules left them loadable.
    script = ("import importlib.util, sys\n"
              "wanted = sys.argv[1] == 'all'\n"
              "for name in ('redis', 'asyncpg', 'asyncpg.protocol.protocol', 'grpc', 'grpc_health.v1.health_pb2'):\n"
              "    if wanted: __import__(name)\n"
              "    elif importlib.util.find_spec(name.split('.')[0]): sys.exit(f'{name} is in the image')\n"
              "import aiohttp, psutil, yaml, prometheus_client, yaml._yaml, multidict._multidict\n"
              "try:\n"
              "    open('/tmp/written', 'w')\n"
              "except OSError as exc:\n"
              "    assert exc.errno == 30, exc  # EROFS: /tmp is world-writable in the image, but the root is read-only\n"
              "else:\n"
              "    sys.exit('wrote /tmp/written')\n"
              "print('ok')\n")
    with run(image, tmp_path, ["python", "-c", script, image.extras]) as running:
        code = running.process.wait(timeout=120)
    assert (code, running.log().strip().splitlines()[-1:]) == (0, ["ok"]), running.log()

    # Without its client, a redis check is refused with the extra to install (check-config reads the config on stdin).
    config = tmp_path / "agent.yaml"
    config.write_text("checks:\n  cache:\n    type: redis\n    url: redis://127.0.0.1:6379\n")
    with run(image, tmp_path, image.command("check-config", "/dev/stdin"), stdin=config) as running:
        code = running.process.wait(timeout=120)
    if image.extras == "all":
        assert code == 0 and "/dev/stdin: ok, 1 checks" in running.log(), running.log()
    else:
        assert code == 2 and "pip install 'sidecar-agent[redis]'" in running.log(), running.log()
        assert "Traceback" not in running.log()


def test_the_agents_layer_stays_small(image: Image) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image.reference))
    base = int(podman("image", "inspect", "--format", "{{.Size}}", BASE))
    mib = (size - base) / 2**20
    assert 0 < mib <= SIZE_BOUND_MIB[image.extras], f"{image.reference}: {mib:.1f} MiB above the base"


def test_the_built_image_is_tagged_with_the_one_reference(built: dict[str, str]) -> None:
    names = podman("image", "inspect", "--format", "{{json .RepoTags}}", agent.IMAGE)
    assert f"localhost/{agent.IMAGE}" in json.loads(names)
