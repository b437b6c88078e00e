#!/usr/bin/env python3
"""A one-node Kubernetes cluster for the end-to-end tests, built and run on this machine.

    tools/cluster.py up [--state DIR]        build what is missing, start the cluster, wait for the node Ready
    tools/cluster.py down [--state DIR]      stop every process it started, remove what it made (idempotent)
    tools/cluster.py load-image REF          copy an image from the buildah/podman store into the cluster
    tools/cluster.py kubectl ARGS...         kubectl with the cluster's admin kubeconfig
    tools/cluster.py env                     the shell lines that point kubectl at the cluster
    tools/cluster.py build                   only build (or find in the cache) the binaries and pause image

Every daemon (etcd, the control plane, containerd, the kubelet, kube-proxy) is a child process started
here, recorded by pid in the state directory, and placed in a cgroup of its own, so that `down` stops
exactly those and whatever they started (containerd's shims, the pods). containerd and the kubelet run
in a mount namespace of the harness with shared propagation (the host's `/` is private), so that their
mounts vanish with it. Addresses: the node on a bridge at 198.18.0.1, pods in 198.18.0.0/24, Services
in 198.19.0.0/16; nothing leaves the machine, images come only from the local store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.4"  # the etcd server k8s.io/kubernetes v1.34.4 requires (go.mod); Debian's 3.4 is older
PAUSE_TAG = "3.10.1"  # build/pause/Makefile of that version
PAUSE_IMAGE = f"localhost/pause:{PAUSE_TAG}"
REPO = Path(__file__).resolve().parent.parent
GO_MODULE = REPO / "tools" / "cluster"
CACHE = Path(os.environ.get("SIDECAR_AGENT_CACHE", Path.home() / ".cache" / "sidecar-agent")) / "kubernetes" / VERSION
BIN = CACHE / "bin"
DEFAULT_STATE = Path("/var/tmp/sidecar-agent-cluster")  # noqa: S108 (root's own, fixed name: one cluster a machine)
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")
PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "conntrack", "iproute2", "openssl",
            "util-linux", "gcc", "libc6-dev", "buildah", "podman")

NODE = "sidecar-agent-node"
BRIDGE = "sacbr0"
NODE_IP = "198.18.0.1"
NODE_SUBNET = "198.18.0.0/24"
POD_CIDR = "198.18.0.0/16"
SERVICE_CIDR = "198.19.0.0/16"
SERVICE_IP = "198.19.0.1"  # the `kubernetes` Service: the first address of the range
API_PORT = 16443
ETCD_CLIENT = "http://127.0.0.1:12379"
ETCD_PEER = "http://127.0.0.1:12380"
CGROUP = "sidecar-agent-cluster"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CHAIN_PREFIXES = ("KUBE-", "CNI-")
# Host settings the kubelet, kube-proxy or the bridge plugin may change: saved by `up`, put back by `down`.
SYSCTLS = ("net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet", "net/bridge/bridge-nf-call-iptables",
           "net/bridge/bridge-nf-call-ip6tables", "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
           "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
           "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
           "net/netfilter/nf_conntrack_tcp_timeout_close_wait")
# System paths that containerd, its shims, the CNI library or the kubelet create whatever their configuration:
# removed by `down` when `up` found them absent. Only these hold nothing but the cluster's files; SHARED_PATHS
# (where other tools of the machine may put theirs meanwhile, `ip netns add` say) are removed only when empty.
SYSTEM_PATHS = ("/run/containerd", "/var/lib/cni", "/var/log/containers", "/var/log/pods", "/opt/containerd")
SHARED_PATHS = ("/run/netns", "/var/lib/kubelet", "/etc/cni", "/opt/cni")
# The start order; `down` stops them in the reverse one.
DAEMONS = ("mountns", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd",
           "kubelet", "kube-proxy")
FAIL_AT_ENV = "SIDECAR_AGENT_CLUSTER_FAIL_AT"  # tests: make `up` fail right after starting this daemon


class ClusterError(Exception):
    """A step of the harness failed; the message says which and why."""


def log(message: str) -> None:
    """Progress on stderr, with the seconds since the command started."""
    print(f"cluster: [{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


STARTED = time.monotonic()


def run(cmd: Sequence[str | Path], *, check: bool = True, **kwargs: object) -> str:
    """Runs a command to completion; its stdout, or a ClusterError with its output's end."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(str(c) for c in cmd)} exited {proc.returncode}\n{(proc.stdout + proc.stderr)[-2000:]}")
    return str(proc.stdout)


# --------------------------------------------------------------------------------------------- the state dir


class State:
    """The paths of one cluster's state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pids = root / "pids"
        self.logs = root / "logs"
        self.pki = root / "pki"
        self.kubelet = root / "kubelet"
        self.containerd = root / "containerd"
        self.cni = root / "cni"
        self.admin = root / "admin.kubeconfig"
        self.socket = root / "containerd" / "containerd.sock"
        self.record = root / "record.json"

    def read_record(self) -> dict[str, object]:
        """What `up` found before it changed the host (sysctls, absent paths), for `down` to restore."""
        try:
            data = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def kubectl_cmd(state: State) -> list[str]:
    """The kubectl command line for this cluster."""
    return [str(BIN / "kubectl"), "--kubeconfig", str(state.admin)]


# ------------------------------------------------------------------------------------------------ building


def ensure_packages() -> None:
    """Installs the Debian packages the cluster needs that are missing (apt-get update once, first)."""
    missing = [p for p in PACKAGES if not _installed(p)]
    if not missing:
        return
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def _installed(package: str) -> bool:
    return run(["dpkg-query", "-W", "-f=${Status}", package], check=False).endswith(" installed")


def _ldflags() -> str:
    # Version stamps as Kubernetes' own build sets them: the kubelet's probes send `kube-probe/MAJOR.MINOR`
    # from these, and kubectl and the API server report them.
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        major, minor = VERSION[1:].split(".")[:2]
        flags += [f"-X {pkg}.gitVersion={VERSION}", f"-X {pkg}.gitMajor={major}", f"-X {pkg}.gitMinor={minor}",
                  f"-X {pkg}.gitTreeState=clean", f"-X {pkg}.buildDate=1970-01-01T00:00:00Z"]
    return " ".join(flags)


def build_binaries() -> None:
    """Builds the missing Kubernetes and etcd binaries into the cache, from tools/cluster/go.mod."""
    BIN.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod")
    missing = [b for b in BINARIES if not (BIN / b).exists()]
    if missing:
        log(f"go build {' '.join(missing)} (Kubernetes {VERSION}; about 10 minutes on 2 idle cores, 30 on busy ones)")
        pkgs = [f"k8s.io/kubernetes/cmd/{b}" for b in missing]
        run(["go", "build", "-trimpath", "-ldflags", _ldflags(), "-o", f"{BIN}/", *pkgs], cwd=GO_MODULE, env=env)
    if not (BIN / "etcd").exists():
        log(f"go build etcd {ETCD_VERSION}")
        run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", BIN / "etcd", "go.etcd.io/etcd/server/v3"],
            cwd=GO_MODULE, env=env)


def _module_dir(module: str) -> Path:
    out = run(["go", "list", "-m", "-f", "{{.Dir}}", module], cwd=GO_MODULE, env=dict(os.environ, GOFLAGS="-mod=mod"))
    return Path(out.strip())


def build_pause() -> Path:
    """The sandbox image as an OCI archive in the cache: Kubernetes' static C pause, in an image from scratch."""
    archive = CACHE / f"pause-{PAUSE_TAG}.oci.tar"
    if archive.exists():
        return archive
    source = _module_dir("k8s.io/kubernetes") / "build" / "pause" / "linux" / "pause.c"
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        log(f"gcc -static {source}")
        run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_TAG}-sidecar-agent", "-o", binary, source])
        container = run(["buildah", "from", "scratch"]).strip()
        try:
            run(["buildah", "copy", "--chmod", "0755", container, binary, "/pause"])
            run(["buildah", "config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container])
            run(["buildah", "commit", "-q", container, PAUSE_IMAGE])
        finally:
            run(["buildah", "rm", container], check=False)
        run(["buildah", "push", "-q", PAUSE_IMAGE, f"oci-archive:{archive}.tmp:{PAUSE_IMAGE}"])
        os.replace(f"{archive}.tmp", archive)
    return archive


# ------------------------------------------------------------------------------------------------ certificates


def make_cert(pki: Path, name: str, subject: str, *, ca: bool = False, sans: str = "", server: bool = False) -> None:
    """NAME.key and NAME.crt in `pki`: the CA itself (`ca`), else signed by pki/ca.*; a client certificate, or a
    serving one too (`server`), for the subjectAltNames `sans` (openssl's syntax: IP:...,DNS:...)."""
    key, crt = pki / f"{name}.key", pki / f"{name}.crt"
    run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
    if ca:
        run(["openssl", "req", "-x509", "-new", "-key", key, "-subj", subject, "-days", "30", "-out", crt,
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        return
    ext = pki / f"{name}.ext"
    usage = "serverAuth,clientAuth" if server else "clientAuth"
    ext.write_text(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
                   + (f"subjectAltName={sans}\n" if sans else ""))
    csr = pki / f"{name}.csr"
    run(["openssl", "req", "-new", "-key", key, "-subj", subject, "-out", csr])
    run(["openssl", "x509", "-req", "-in", csr, "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key", "-CAcreateserial",
         "-days", "30", "-extfile", ext, "-out", crt])


def make_pki(state: State) -> None:
    """A CA, the API server's serving certificate, one client certificate per component, the service-account keys."""
    pki = state.pki
    pki.mkdir(parents=True)
    make_cert(pki, "ca", "/CN=sidecar-agent-cluster-ca", ca=True)
    sans = (f"IP:{NODE_IP},IP:127.0.0.1,IP:{SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")
    make_cert(pki, "apiserver", "/CN=kube-apiserver", sans=sans, server=True)
    make_cert(pki, "kubelet-serving", f"/CN={NODE}", sans=f"IP:{NODE_IP},DNS:{NODE}", server=True)
    for name, subject in (("admin", "/O=system:masters/CN=sidecar-agent-admin"),
                          ("controller-manager", "/CN=system:kube-controller-manager"),
                          ("scheduler", "/CN=system:kube-scheduler"),
                          ("kubelet", f"/O=system:nodes/CN=system:node:{NODE}"),
                          ("kube-proxy", "/CN=system:kube-proxy")):
        make_cert(pki, name, subject)
    make_service_account_keys(pki)


def make_service_account_keys(pki: Path) -> None:
    """sa.key and sa.pub: the key pair the API server signs and checks service-account tokens with."""
    run(["openssl", "genrsa", "-out", pki / "sa.key", "2048"])
    run(["openssl", "rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub"])


def write_kubeconfig(state: State, path: Path, user: str) -> None:
    """A kubeconfig for one client certificate of the PKI (JSON is YAML)."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sidecar-agent",
        "clusters": [{"name": "sidecar-agent", "cluster": {
            "server": f"https://{NODE_IP}:{API_PORT}", "certificate-authority": str(state.pki / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate": str(state.pki / f"{user}.crt"),
                                          "client-key": str(state.pki / f"{user}.key")}}],
        "contexts": [{"name": "sidecar-agent", "context": {"cluster": "sidecar-agent", "user": user}}],
    }
    path.write_text(json.dumps(config, indent=1))


# ------------------------------------------------------------------------------------------------ processes


def _stat(pid: int) -> list[str] | None:
    # /proc/PID/stat from field 3 (the state) on: the command's name before it, in parentheses, may hold spaces.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    # Field 22: the start time tells a recorded process from a later one with its pid.
    stat = _stat(pid)
    return stat[19] if stat else None


def _cgroup_dirs(sub: str = "") -> list[Path]:
    """The harness's cgroup (or a child of it) in every cgroup v1 hierarchy of the machine."""
    dirs = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        if hierarchy.name != "unified" and hierarchy.is_dir() and (hierarchy / "cgroup.procs").exists():
            dirs.append(hierarchy / CGROUP / sub if sub else hierarchy / CGROUP)
    return dirs


def make_cgroups() -> None:
    """The harness's cgroup in each hierarchy, with a `harness` child for the daemons; the kubelet's root."""
    for path in _cgroup_dirs("harness"):
        for level in (path.parent, path):
            level.mkdir(exist_ok=True)
            if (level / "cpuset.cpus").exists():
                # A new cpuset is empty and admits no process until given its parent's CPUs and memory nodes.
                for key in ("cpuset.cpus", "cpuset.mems"):
                    if not (level / key).read_text().strip():
                        (level / key).write_text((level.parent / key).read_text())


def _join_harness_cgroup() -> None:
    # Runs in the child between fork and exec: the daemon and all it starts are then in the harness's cgroup.
    pid = str(os.getpid())
    for path in _cgroup_dirs("harness"):
        (path / "cgroup.procs").write_text(pid)


def start_daemon(state: State, name: str, cmd: Sequence[str | Path], *, in_mountns: bool = False) -> None:
    """Starts a daemon in the background, its output in logs/NAME.log, its pid recorded."""
    argv = [str(c) for c in cmd]
    if in_mountns:
        argv = ["nsenter", f"--mount=/proc/{read_pid(state, 'mountns')}/ns/mnt", "--", *argv]
    state.logs.mkdir(parents=True, exist_ok=True)
    with open(state.logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=state.root,
                                start_new_session=True, preexec_fn=_join_harness_cgroup)
    state.pids.mkdir(parents=True, exist_ok=True)
    (state.pids / f"{name}.pid").write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
    # The harness exits after `up`; the daemon outlives it. Dropping the Popen without wait() is deliberate.
    proc.returncode = 0
    if os.environ.get(FAIL_AT_ENV) == name:
        raise ClusterError(f"failing on purpose after starting {name} ({FAIL_AT_ENV})")


def read_pid(state: State, name: str) -> int | None:
    """The recorded pid of a daemon, if that very process still runs."""
    try:
        pid_text, started = (state.pids / f"{name}.pid").read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    return pid if _start_time(pid) == started else None


def stop_daemon(state: State, name: str, timeout: float = 15.0) -> None:
    """SIGTERM to a recorded daemon, SIGKILL after the timeout; forgets it."""
    pid = read_pid(state, name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)
    (state.pids / f"{name}.pid").unlink(missing_ok=True)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        stat = _stat(pid)
        if stat is None or stat[0] == "Z":
            return True
        time.sleep(0.1)
    return False


def cgroup_pids() -> list[int]:
    """Every process still in the harness's cgroups: containerd's shims and the pods' processes included."""
    pids: set[int] = set()
    for top in _cgroup_dirs():
        if top.exists():
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def kill_cgroups(timeout: float = 20.0) -> None:
    """SIGKILL to whatever is left in the harness's cgroups, until they are empty; then the cgroups go."""
    deadline = time.monotonic() + timeout
    while (pids := cgroup_pids()) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    if pids:
        raise ClusterError(f"processes left in the cgroup {CGROUP}: {pids}")
    for top in _cgroup_dirs():
        if top.exists():
            # Deepest first: a cgroup is removed with rmdir once its children are gone.
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir_retry(path)
            _rmdir_retry(top)


def _rmdir_retry(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)  # the kernel frees a cgroup a moment after its last process exits
    path.rmdir()


# ------------------------------------------------------------------------------------------------ configs


def write_containerd_config(state: State) -> Path:
    """containerd with every path in the state dir (netns mounts included), runc with cgroupfs, our pause image."""
    cd = state.containerd
    config = f"""version = 2
root = "{cd}/root"
state = "{cd}/state"
[grpc]
  address = "{state.socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{cd}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  # The kubelet asks for oom_score_adj -998 for sandboxes; this sandbox may not lower its own (EACCES from runc's
  # nsexec: "failed to update /proc/self/oom_score_adj"), so cap it at containerd's own value, as rootless setups do.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{state.cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{cd}/runc"
        SystemdCgroup = false
"""
    cd.mkdir(parents=True)
    path = cd / "config.toml"
    path.write_text(config)
    return path


def write_cni_config(state: State) -> None:
    """The bridge plugin on the harness's bridge, host-local addresses from the node's /24, no masquerading."""
    state.cni.mkdir(parents=True)
    conf = {"cniVersion": "0.4.0", "name": "sidecar-agent", "plugins": [{
        "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": NODE_SUBNET, "gateway": NODE_IP}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(state.root / "cni-ipam")}}]}
    (state.cni / "10-sidecar-agent.conflist").write_text(json.dumps(conf, indent=1))


def write_kubelet_config(state: State) -> Path:
    """The kubelet: cgroupfs under the harness's cgroup, cgroup v1 accepted, swap allowed, every path in the state dir."""
    pki = state.pki
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": NODE_IP, "port": 10250, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP}", "failCgroupV1": False, "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{state.socket}",
        "podLogsDir": str(state.root / "pod-logs"), "clusterDomain": "cluster.local", "clusterDNS": [],
        "resolvConf": "/etc/resolv.conf", "serializeImagePulls": False, "maxPods": 60,
        # This is a shared disk: evict nothing for its fullness, collect no image (they cannot be pulled again).
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "0%", "imagefs.available": "0%",
                         "nodefs.inodesFree": "0%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "syncFrequency": "10s", "nodeStatusReportFrequency": "10s", "fileCheckFrequency": "5s",
        "shutdownGracePeriod": "0s", "protectKernelDefaults": False, "rotateCertificates": False,
        "enableControllerAttachDetach": True, "localStorageCapacityIsolation": True,
    }
    path = state.root / "kubelet-config.json"
    path.write_text(json.dumps(config, indent=1))
    return path


def write_proxy_config(state: State) -> Path:
    """kube-proxy in iptables mode; conntrack sysctls left alone; no NodePort on loopback (route_localnet)."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(state.root / "kube-proxy.kubeconfig")},
        "mode": "iptables", "clusterCIDR": POD_CIDR, "hostnameOverride": NODE,
        "bindAddress": NODE_IP, "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
    }
    path = state.root / "kube-proxy-config.json"
    path.write_text(json.dumps(config, indent=1))
    return path


# ------------------------------------------------------------------------------------------------ host changes


def read_sysctls() -> dict[str, str]:
    """The current values of the sysctls the cluster may change (those the kernel has)."""
    sysctls = {}
    for key in SYSCTLS:
        with contextlib.suppress(OSError):
            sysctls[key] = (Path("/proc/sys") / key).read_text().strip()
    return sysctls


def record_host(state: State) -> None:
    """Saves the sysctls the cluster may change and which system paths are absent, for `down`."""
    absent = [p for p in SYSTEM_PATHS + SHARED_PATHS if not os.path.lexists(p)]
    state.record.write_text(json.dumps({"sysctls": read_sysctls(), "absent": absent}, indent=1))


def restore_host(state: State) -> None:
    """Puts the saved sysctls back and removes the system paths that `up` found absent."""
    record = state.read_record()
    sysctls = record.get("sysctls", {})
    if isinstance(sysctls, dict):
        for key, value in sysctls.items():
            path = Path("/proc/sys") / key
            with contextlib.suppress(OSError):
                if path.read_text().strip() != value:
                    path.write_text(value)
    absent = record.get("absent", [])
    if isinstance(absent, list):
        for path in absent:
            if path in SHARED_PATHS:
                with contextlib.suppress(OSError):
                    os.rmdir(path)  # only when empty
            elif os.path.isdir(path) and not os.path.islink(path):
                _unmount_under(Path(path))
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or under a path, in this process's mount namespace."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(prefix):
            points.append(point)
    return points


def _unmount_under(root: Path) -> None:
    for point in sorted(mounts_under(root), key=len, reverse=True):
        run(["umount", "-l", point], check=False)


def make_bridge() -> None:
    """The node's bridge with its address: the API server and the kubelet listen there before any pod exists."""
    if run(["ip", "link", "show", BRIDGE], check=False):
        return
    run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def remove_links() -> None:
    """The pods' veths (any port of the bridge) and the bridge."""
    out = run(["ip", "-j", "link", "show", "master", BRIDGE], check=False)
    for link in json.loads(out or "[]"):
        run(["ip", "link", "del", link["ifname"]], check=False)
    run(["ip", "link", "del", BRIDGE], check=False)


def harness_chains() -> dict[tuple[str, str], list[str]]:
    """The iptables chains of kube-proxy, the kubelet and the CNI plugins, per (command, table)."""
    found: dict[tuple[str, str], list[str]] = {}
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            out = run([tool, "-w", "-t", table, "-S"], check=False)
            chains = [line.split()[1] for line in out.splitlines()
                      if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)]
            if chains:
                found[(tool, table)] = chains
    return found


def remove_chains() -> None:
    """Deletes every rule that jumps to a harness chain, then flushes and deletes those chains."""
    for (tool, table), chains in harness_chains().items():
        out = run([tool, "-w", "-t", table, "-S"], check=False)
        for line in out.splitlines():
            words = shlex.split(line)  # comments are quoted: "-m comment --comment \"kubernetes service portals\""
            if words[:1] == ["-A"] and any(w.startswith(CHAIN_PREFIXES) for w in words[2:]) \
                    and not words[1].startswith(CHAIN_PREFIXES):
                run([tool, "-w", "-t", table, "-D", *words[1:]], check=False)
        for chain in chains:
            run([tool, "-w", "-t", table, "-F", chain], check=False)
        for chain in chains:
            run([tool, "-w", "-t", table, "-X", chain], check=False)


# ------------------------------------------------------------------------------------------------ up and down


def wait_for(what: str, probe: Callable[[], T], timeout: float, interval: float = 0.5) -> T:
    """Polls a callable until it returns something true, and returns that; a ClusterError naming `what` after the
    timeout (the tests' waits too: tests/cluster/harness.py)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _kubectl_ok(state: State, *args: str) -> bool:
    proc = subprocess.run([*kubectl_cmd(state), *args], capture_output=True, text=True, check=False)
    return proc.returncode == 0


def etcd_command(data_dir: Path, client_url: str, peer_url: str) -> list[str | Path]:
    """A one-member etcd for the API server alone: no fsync (its data lives as long as the test)."""
    return [BIN / "etcd", "--name", "default", "--data-dir", data_dir,
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"default={peer_url}", "--unsafe-no-fsync", "--log-level", "warn"]


def apiserver_command(pki: Path, etcd_url: str, address: str, port: int, service_cidr: str) -> list[str | Path]:
    """kube-apiserver on address:port with the PKI of make_cert and make_service_account_keys (apiserver.*, ca.*,
    sa.*); the caller adds its authorization mode and whatever else it needs."""
    return [BIN / "kube-apiserver", f"--etcd-servers={etcd_url}", f"--bind-address={address}",
            f"--advertise-address={address}", f"--secure-port={port}",
            f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
            f"--client-ca-file={pki}/ca.crt", f"--service-cluster-ip-range={service_cidr}",
            f"--service-account-key-file={pki}/sa.pub", f"--service-account-signing-key-file={pki}/sa.key",
            "--service-account-issuer=https://kubernetes.default.svc", "--profiling=false", "--v=1"]


def start_control_plane(state: State) -> None:
    """etcd, the API server (waited for), the controller manager and the scheduler."""
    pki = state.pki
    start_daemon(state, "etcd", etcd_command(state.root / "etcd", ETCD_CLIENT, ETCD_PEER))
    start_daemon(state, "kube-apiserver", [
        *apiserver_command(pki, ETCD_CLIENT, NODE_IP, API_PORT, SERVICE_CIDR), "--authorization-mode=Node,RBAC",
        f"--kubelet-client-certificate={pki}/admin.crt", f"--kubelet-client-key={pki}/admin.key",
        # The node's name resolves nowhere (no DNS for it): reach the kubelet (logs, exec) at its address.
        "--kubelet-preferred-address-types=InternalIP", "--allow-privileged=true"])
    wait_for("the API server's /readyz", lambda: _kubectl_ok(state, "get", "--raw", "/readyz"), 90)
    log("the API server is ready")
    cm_kubeconfig, sched_kubeconfig = state.root / "controller-manager.kubeconfig", state.root / "scheduler.kubeconfig"
    write_kubeconfig(state, cm_kubeconfig, "controller-manager")
    write_kubeconfig(state, sched_kubeconfig, "scheduler")
    start_daemon(state, "kube-controller-manager", [
        BIN / "kube-controller-manager", f"--kubeconfig={cm_kubeconfig}", f"--authentication-kubeconfig={cm_kubeconfig}",
        f"--authorization-kubeconfig={cm_kubeconfig}", "--leader-elect=false", "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki}/sa.key", f"--root-ca-file={pki}/ca.crt",
        f"--cluster-signing-cert-file={pki}/ca.crt", f"--cluster-signing-key-file={pki}/ca.key",
        f"--cluster-cidr={POD_CIDR}", f"--service-cluster-ip-range={SERVICE_CIDR}", "--allocate-node-cidrs=false",
        "--bind-address=127.0.0.1", "--secure-port=10257", "--v=1"])
    start_daemon(state, "kube-scheduler", [
        BIN / "kube-scheduler", f"--kubeconfig={sched_kubeconfig}", f"--authentication-kubeconfig={sched_kubeconfig}",
        f"--authorization-kubeconfig={sched_kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", "--secure-port=10259", "--v=1"])


def start_node(state: State, pause: Path) -> None:
    """The mount namespace, containerd (with the pause image), the kubelet and kube-proxy."""
    # A process that only holds the harness's mount namespace: / made rshared there (the kubelet's volumes
    # need shared propagation), private towards the host, and gone with its last process.
    start_daemon(state, "mountns", ["unshare", "--mount", "--propagation", "shared", "--", "sleep", "infinity"])
    config = write_containerd_config(state)
    write_cni_config(state)
    start_daemon(state, "containerd", ["containerd", "--config", config, "--log-level", "warn"], in_mountns=True)
    wait_for("containerd's socket", lambda: run(["ctr", "-a", state.socket, "version"], check=False) != "", 30)
    import_archive(state, pause)
    kubelet_kubeconfig = state.root / "kubelet.kubeconfig"
    write_kubeconfig(state, kubelet_kubeconfig, "kubelet")
    start_daemon(state, "kubelet", [
        BIN / "kubelet", f"--config={write_kubelet_config(state)}", f"--kubeconfig={kubelet_kubeconfig}",
        f"--root-dir={state.kubelet}", f"--hostname-override={NODE}", f"--node-ip={NODE_IP}", "--v=1"], in_mountns=True)
    write_kubeconfig(state, state.root / "kube-proxy.kubeconfig", "kube-proxy")
    start_daemon(state, "kube-proxy", [BIN / "kube-proxy", f"--config={write_proxy_config(state)}", "--v=1"])


def up(state: State) -> None:
    """Builds what is missing, starts the cluster and waits for the node Ready; on failure, tears down."""
    ensure_packages()
    build_binaries()
    pause = build_pause()
    down(state, quiet=True)  # a cluster left running or half-made by an earlier run
    state.root.mkdir(parents=True, exist_ok=True)
    record_host(state)
    try:
        make_pki(state)
        write_kubeconfig(state, state.admin, "admin")
        make_cgroups()
        make_bridge()
        start_control_plane(state)
        start_node(state, pause)
        wait_for(f"node {NODE}", lambda: _kubectl_ok(state, "get", "node", NODE), 60)
        wait_for(f"node {NODE} Ready", lambda: _kubectl_ok(state, "wait", "--for=condition=Ready", f"node/{NODE}",
                                                          "--timeout=5s"), 120)
        wait_for("the default service account", lambda: _kubectl_ok(state, "get", "serviceaccount", "default"), 60)
    except BaseException:
        log(f"up failed: tearing down (the daemons' logs stay in {state.logs})")
        down(state, quiet=True)
        raise
    log(f"node {NODE} is Ready")
    print(f"kubeconfig: {state.admin}")
    print(f"kubectl: {' '.join(kubectl_cmd(state))}")


def down(state: State, *, quiet: bool = False) -> None:
    """Stops every daemon by its recorded pid, then what they started; removes mounts, links, chains, cgroups."""
    if not quiet:
        log("stopping the cluster")
    for name in reversed(DAEMONS):
        stop_daemon(state, name)
    kill_cgroups()
    # The mount namespace died with its last process; a mount of the harness in the host's is a leak to mend.
    _unmount_under(state.root)
    remove_links()
    remove_chains()
    restore_host(state)
    if state.root.exists():
        for child in state.root.iterdir():
            if child != state.logs:  # the daemons' logs stay for a post-mortem; `up` starts them afresh
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    if not quiet:
        log("the cluster is down")


def load_images(state: State, refs: Sequence[str]) -> None:
    """Copies images from the buildah/podman store into the cluster's containerd (namespace k8s.io), in one archive
    (the layers they share, the base's, are written and imported once)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "images.tar"
        run(["podman", "save", "--multi-image-archive", "--format", "docker-archive", "-o", archive, *refs])
        import_archive(state, archive)
    for ref in refs:
        full = run(["podman", "image", "inspect", "--format", "{{index .RepoTags 0}}", ref]).strip()
        # podman names a locally built image localhost/NAME, the kubelet asks for docker.io/library/NAME.
        name = full.removeprefix("localhost/")
        if "/" not in name:
            name = f"docker.io/library/{name}"
        if name != full:
            run(["ctr", "-a", state.socket, "-n", "k8s.io", "images", "tag", "--force", full, name])
        log(f"loaded {ref} as {name}")


def import_archive(state: State, archive: Path) -> None:
    """Imports an OCI archive into the cluster's containerd, unpacked for its snapshotter."""
    run(["ctr", "-a", state.socket, "-n", "k8s.io", "images", "import", "--no-unpack=false", archive])


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="tools/cluster.py", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help=f"the state directory (default {DEFAULT_STATE})")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "env", "build"):
        p = sub.add_parser(name)
        p.add_argument("--state", type=Path, default=argparse.SUPPRESS)
    p = sub.add_parser("load-image")
    p.add_argument("ref", nargs="+")
    p.add_argument("--state", type=Path, default=argparse.SUPPRESS)
    p = sub.add_parser("kubectl")
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    state = State(args.state.resolve())
    if os.geteuid() != 0 and args.command in ("up", "down", "load-image"):
        print("cluster: needs root (namespaces, cgroups, iptables)", file=sys.stderr)
        return 2
    try:
        return _dispatch(args, state)
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, state: State) -> int:
    if args.command == "up":
        up(state)
    elif args.command == "down":
        down(state)
    elif args.command == "build":
        ensure_packages()
        build_binaries()
        build_pause()
    elif args.command == "load-image":
        load_images(state, args.ref)
    elif args.command == "env":
        print(f"export KUBECONFIG={state.admin}\nexport PATH={BIN}:$PATH")
    elif args.command == "kubectl":
        return subprocess.call([*kubectl_cmd(state), *args.args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
