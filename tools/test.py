"""Set up this machine for the test suite, then run it: `python3 tools/test.py [PYTEST ARGS...]`.

On a new Debian machine (as root) it installs what the tests need, starts it and runs pytest in `.venv`:

1. the Debian packages in `PACKAGES` that are missing (one `apt-get update`, then one `apt-get install`);
2. PostgreSQL: the cluster on port 5432 (created if there is none) listens on 127.0.0.1 and ::1, gets trust
   authentication for `postgres@127.0.0.1/test` and `postgres@[::1]/test`, is started, and has the database `test`;
3. Redis on 127.0.0.1:6379 and [::1]:6379, with no persistence;
4. the checkout readable by uid 65532, the image's user, which `tests/deploy/test_security.py` runs the agent as;
5. `.venv` with `pip install -e '.[dev]'` (again only when `pyproject.toml` changed);
6. `pytest` with the arguments given (under coverage with `--coverage`, then the combined report);
7. with no pytest argument (the whole suite), then the cluster tests: `pytest tests/cluster`, a
   real one-node Kubernetes that tools/cluster.py builds (once per version, cached in ~/.cache/sidecar-agent),
   starts and tears down. They run after the rest, never beside it: their pods are real processes of this
   machine, which the other tests' process lookups would see.

Each step first looks and changes only what is missing, so a second run changes nothing and starts nothing
twice. The PostgreSQL and Redis servers it starts keep running after the tests (the next run finds them up);
stop them with `pg_ctlcluster 15 main stop` and `redis-cli -p 6379 shutdown nosave`.

Options, before any pytest argument: `--coverage` (what CI adds), `--setup-only` (no pytest), and
`--postgres-only CLUSTER` (as `15/main`: set up that one cluster and nothing else; the test of step 2 uses it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"

# Debian package -> the command that shows it is installed.
PACKAGES = {
    "prometheus": "promtool",  # promtool checks /metrics and the alert rules
    "wrk": "wrk",  # the benchmarks' load generator (bench/), which the docs promise with the suite
    "dnsmasq-base": "dnsmasq",  # the dns check's tests run a local nameserver
    "nginx-light": "nginx",  # exec mode stops a real nginx through its process group
    "redis-server": "redis-server",  # the redis check's server (redis-tools, its redis-cli, comes along)
    "postgresql": "pg_ctlcluster",  # the postgres check's server; Debian's cluster tools
    # The image tests build the image with .ci/build-image: buildah builds it without a daemon, podman imports
    # the stand-in base that debootstrap makes. crun, conmon and uidmap come along; root needs no fuse-overlayfs.
    "buildah": "buildah",
    "podman": "podman",
    "debootstrap": "debootstrap",
}

PG_PORT = 5432
PG_DATABASE = "test"
PG_USER = "postgres"
HBA_MARK = "# sidecar-agent tests (tools/test.py): passwordless access to the test database on loopback"
LISTEN = "127.0.0.1, ::1"
HBA_LINES = [f"host {PG_DATABASE} {PG_USER} {address} trust" for address in ("127.0.0.1/32", "::1/128")]

REDIS_PORT = 6379
TEST_UID = 65532  # the image's USER; tests/deploy/test_security.py runs the agent from this checkout as that uid


def say(message: str) -> None:
    """One line of progress on stderr (stdout is pytest's)."""
    print(f"tools/test.py: {message}", file=sys.stderr, flush=True)


def run(command: Sequence[str], cwd: Path | str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command that must succeed; on failure exit naming it, with the end of its output."""
    done = subprocess.run(list(command), capture_output=True, text=True, check=False, cwd=cwd, env=env)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-2000:]
        sys.exit(f"tools/test.py: {' '.join(command)} exited {done.returncode}:\n{tail}")
    return done


def within(seconds: float, ready: Callable[[], bool]) -> bool:
    """Whether READY became true within SECONDS (polled every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def install_packages() -> None:
    """Install the Debian packages whose command is missing: one `apt-get update`, then one install."""
    missing = [package for package, command in PACKAGES.items() if shutil.which(command) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"tools/test.py: the tests need Debian's {' '.join(missing)}: run this as root to install them")
    say(f"installing {' '.join(missing)}")
    run(["apt-get", "update", "-qq"])
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


# PostgreSQL ------------------------------------------------------------------------------------------------------

def clusters() -> list[tuple[str, str, int, bool]]:
    """Debian's PostgreSQL clusters: (version, name, port, running)."""
    out = run(["pg_lsclusters", "--no-header"]).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            found.append((fields[0], fields[1], int(fields[2]), fields[3].startswith("online")))
    return found


def main_cluster() -> str:
    """The cluster on port 5432 as "VERSION/NAME", created (newest version, named main) if there is none."""
    for version, name, port, _ in clusters():
        if port == PG_PORT:
            return f"{version}/{name}"
    version = max(os.listdir("/usr/lib/postgresql"), key=lambda v: tuple(int(p) for p in v.split(".")))
    say(f"creating the PostgreSQL cluster {version}/main on port {PG_PORT}")
    run(["pg_createcluster", "--port", str(PG_PORT), version, "main"])
    return f"{version}/main"


def setup_postgres(cluster: str) -> None:
    """Give CLUSTER ("VERSION/NAME") trust authentication for postgres@loopback/test, start it, create `test`.

    Debian's default for host connections is scram-sha-256, so without this the tests' passwordless
    `postgres://postgres@127.0.0.1:5432/test` is refused. Our lines go first in pg_hba.conf, as the first
    matching line wins; they admit only the user postgres to the database test, from loopback.
    """
    version, name = cluster.split("/")
    hba = Path("/etc/postgresql") / version / name / "pg_hba.conf"
    text = hba.read_text()
    changed = HBA_MARK not in text
    if changed:
        say(f"{hba}: trust for {PG_USER}@127.0.0.1 and ::1 to the database {PG_DATABASE}")
        hba.write_text("\n".join([HBA_MARK, *HBA_LINES, ""]) + "\n" + text)
    # Debian listens on 'localhost', which may name 127.0.0.1 alone (as in /etc/hosts here): name both loopbacks.
    shown = subprocess.run(["pg_conftool", "-s", version, name, "show", "listen_addresses"],
                           capture_output=True, text=True, check=False).stdout.strip()
    restart = shown != "*" and "::1" not in shown
    if restart:
        say(f"{cluster}: listen_addresses = '{LISTEN}'")
        run(["pg_conftool", version, name, "set", "listen_addresses", LISTEN])
    port, running = next((p, up) for v, n, p, up in clusters() if (v, n) == (version, name))
    if not running or restart:
        say(f"{'starting' if not running else 'restarting'} the PostgreSQL cluster {cluster} on port {port}")
        # --skip-systemctl-redirect: start it here even where systemd runs (and there is none in CI's container).
        run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start" if not running else "restart"])
    elif changed:
        run(["pg_ctlcluster", version, name, "reload"])
    psql = ["runuser", "-u", "postgres", "--", "psql", "-p", str(port), "-XtAq"]
    # pg_ctlcluster returns once the server accepts connections; a reload is asynchronous (psql below says why if not).
    within(10, lambda: subprocess.run(["pg_isready", "-q", "-p", str(port)], check=False).returncode == 0)
    exists = run([*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"], cwd="/").stdout.strip()
    if exists != "1":
        say(f"creating the database {PG_DATABASE} in {cluster}")
        run([*psql, "-c", f"CREATE DATABASE {PG_DATABASE}"], cwd="/")


# Redis -----------------------------------------------------------------------------------------------------------

def redis_up() -> bool:
    return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(REDIS_PORT), "ping"],
                          capture_output=True, check=False).stdout.strip() == b"PONG"


def setup_redis() -> None:
    """Start Redis on 127.0.0.1 and ::1, port 6379, with no persistence, unless it already answers."""
    if redis_up():
        return
    say(f"starting Redis on 127.0.0.1:{REDIS_PORT} and [::1]:{REDIS_PORT}")
    for folder in ("/var/lib/redis", "/var/log/redis"):
        os.makedirs(folder, exist_ok=True)
    run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", str(REDIS_PORT),
         "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/tests.log"])
    if not within(10, redis_up):
        sys.exit("tools/test.py: Redis did not answer PING within 10 s: see /var/log/redis/tests.log")


# The checkout, readable by the image's user ------------------------------------------------------------------

def open_checkout() -> None:
    """Let uid 65532 traverse the folders above the checkout and read it (only what lacks it is changed).

    tests/deploy/test_security.py runs the agent from this checkout as the image's user; a checkout under a
    0700 home would make every one of its tests fail.
    """
    for parent in reversed(ROOT.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            say(f"chmod o+x {parent} (uid {TEST_UID} runs the agent from this checkout)")
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    for folder, subfolders, files in os.walk(ROOT):
        # Not git's store, nor .cache (the image's base is unpacked there: its own modes must stay as they are).
        subfolders[:] = [s for s in subfolders if not (Path(folder) == ROOT and s in (".git", ".cache"))]
        here = Path(folder)
        for path in [here, *(here / f for f in files)]:
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            wanted = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) or mode & stat.S_IXUSR else 0)
            if mode & wanted != wanted:
                path.chmod(stat.S_IMODE(mode) | wanted)
    # The interpreter .venv links to must be reachable too (a Python built under a 0700 home is not): say so.
    probe = subprocess.run(["setpriv", f"--reuid={TEST_UID}", f"--regid={TEST_UID}", "--clear-groups", str(PYTHON),
                            "-c", "import agent.cli"], capture_output=True, text=True, check=False, cwd="/")
    if probe.returncode != 0:
        say(f"warning: uid {TEST_UID} still cannot run the agent from .venv (tests/deploy/test_security.py will fail, "
            f"saying why): {probe.stderr.strip()[-300:]}")


# The virtualenv --------------------------------------------------------------------------------------------------

def setup_venv() -> None:
    """Create .venv and `pip install -e '.[dev]'`, again only when pyproject.toml changed."""
    stamp = VENV / ".tools-test-installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        say("creating .venv")
        run([sys.executable, "-m", "venv", str(VENV)])
    say("pip install -e '.[dev]'")
    run([str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", ".[dev]"], cwd=ROOT)
    stamp.write_text(wanted)


def run_tests(args: list[str], coverage: bool) -> int:
    """pytest with ARGS in .venv; under coverage, then combine and report (fails below fail_under)."""
    if not coverage:
        return subprocess.call([str(PYTHON), "-m", "pytest", *args], cwd=ROOT)
    cov = [str(PYTHON), "-m", "coverage"]
    subprocess.call([*cov, "erase"], cwd=ROOT)
    code = subprocess.call([*cov, "run", "-m", "pytest", *args], cwd=ROOT)
    subprocess.call([*cov, "combine", "-q"], cwd=ROOT)
    report = subprocess.call([*cov, "report"], cwd=ROOT)
    return code or report


def main(argv: list[str]) -> int:
    """Parse our options (they come before pytest's), set up, then run pytest."""
    coverage = setup_only = False
    postgres_only = None
    while argv and argv[0] in ("--coverage", "--setup-only", "--postgres-only"):
        option = argv.pop(0)
        if option == "--coverage":
            coverage = True
        elif option == "--setup-only":
            setup_only = True
        else:
            if not argv or argv[0].count("/") != 1:
                sys.exit("tools/test.py: --postgres-only needs a cluster, as 15/main")
            postgres_only = argv.pop(0)
    if postgres_only is not None:
        setup_postgres(postgres_only)
        return 0
    install_packages()
    setup_postgres(main_cluster())
    setup_redis()
    setup_venv()
    if os.geteuid() == 0:
        open_checkout()
    if setup_only:
        return 0
    code = run_tests(argv, coverage)
    if argv:  # pytest's own arguments: exactly that run, nothing more
        return code
    if shutil.which("go") is None:
        say("the cluster tests need Go (the machine's toolchain) to build Kubernetes")
        return code or 1
    say("the cluster tests (tests/cluster)")
    return subprocess.call([str(PYTHON), "-m", "pytest", "tests/cluster"], cwd=ROOT) or code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
